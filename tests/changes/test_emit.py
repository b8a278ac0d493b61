"""Change events written by the worker with the changes they describe (no HTTP: the worker alone)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from lily import admin
from lily.config import Settings
from lily.domain.events import ASSET_DELETE, ASSET_UPSERT, LINEAGE_UPSERT, NewEvent
from lily.pipeline.runner import build_pipeline
from lily.pipeline.worker import Worker
from lily.store import log as store_log
from lily.store.db import Database

TENANT = "acme"


async def _apply(db: Database, settings: Settings, events: list[NewEvent]) -> None:
    async with db.tenant(TENANT) as conn:
        await store_log.append(conn, events, settings.partitions)
    worker = Worker(db, settings, build_pipeline(settings))
    while await worker.drain_once():
        pass


async def _rows(database_url: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        cur = await conn.execute("SELECT * FROM change_events ORDER BY xid, seq")
        return await cur.fetchall()


async def test_the_worker_writes_a_change_event_per_applied_change(
    db: Database, settings: Settings, database_url: str
) -> None:
    await admin.create_tenant(db, TENANT)
    qn = "pg://db/s.orders"
    await _apply(db, settings, [NewEvent(TENANT, qn, ASSET_UPSERT, {"type": "table", "description": "a"}, "ann")])
    await _apply(db, settings, [NewEvent(TENANT, qn, ASSET_UPSERT, {"description": "b"}, "bob")])
    await _apply(db, settings, [NewEvent(TENANT, qn, ASSET_UPSERT, {"description": "b"}, "bob")])  # no change
    await _apply(
        db,
        settings,
        [
            NewEvent(
                TENANT, "pg://db/s.daily", LINEAGE_UPSERT, {"upstreams": [qn], "downstreams": ["pg://db/s.daily"]}, "cy"
            )
        ],
    )
    await _apply(db, settings, [NewEvent(TENANT, qn, ASSET_DELETE, {}, "dee")])
    rows = await _rows(database_url)
    assert [(r["type"], r["qualified_name"], r["version"], r["actor"]) for r in rows] == [
        ("asset.created", qn, 1, "ann"),
        ("asset.updated", qn, 2, "bob"),
        ("asset.created", "pg://db/s.daily", 1, "cy"),  # the placeholder lineage made
        ("lineage.added", "pg://db/s.daily", None, "cy"),
        ("asset.deleted", qn, 3, "dee"),
        ("asset.upstream_changed", "pg://db/s.daily", 2, "lily:propagation"),  # a follow-up, applied after
    ]
    assert rows[1]["changes"] == {"description": {"from": "a", "to": "b"}}
    assert rows[2]["changes"]["placeholder"] == {"from": None, "to": True}
    assert rows[3]["changes"] == {"upstreams": {"items": [qn], "count": 1}, "process": None}
    assert rows[4]["changes"] == {"deleted": {"from": False, "to": True}}
    assert rows[5]["changes"]["upstream"]["qualified_name"] == qn
    assert rows[5]["changes"]["upstream"]["change"] == {"kind": "deleted"}
    assert rows[5]["origin"]["source"] == "propagation"
    assert all(r["tenant_id"] == TENANT and r["origin"]["event_id"] for r in rows)
