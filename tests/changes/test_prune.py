"""Pruning change events by age: every tenant's, only the old ones, in batches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from lily import admin
from lily.changes import prune
from lily.changes.prune import PruneChangeEvents
from lily.config import Settings
from lily.domain.changes import ChangeEvent
from lily.plugins.protocols import JobContext
from lily.store import changes as store
from lily.store.db import Database


async def seed(db: Database, tenant_id: str, ages_days: list[float]) -> None:
    now = datetime.now(UTC)
    async with db.tenant(tenant_id) as conn:
        await store.insert(
            conn,
            [
                ChangeEvent(
                    id=uuid.uuid4(),
                    type="asset.updated",
                    tenant_id=tenant_id,
                    actor="test",
                    occurred_at=now - timedelta(days=age),
                    qualified_name=f"{tenant_id}:{age}",
                )
                for age in ages_days
            ],
        )


async def names(database_url: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT qualified_name FROM change_events ORDER BY qualified_name")
        return [r[0] for r in await cur.fetchall()]


async def test_old_change_events_of_every_tenant_are_pruned(
    db: Database, settings: Settings, database_url: str, monkeypatch
) -> None:
    for tenant_id in ("acme", "globex"):
        await admin.create_tenant(db, tenant_id)
    await seed(db, "acme", [1, 29.9, 31, 40, 41])
    await seed(db, "globex", [0, 35])
    monkeypatch.setattr(prune, "BATCH", 2)  # several batches, and one that comes back short
    settings = settings.model_copy(update={"change_events_retention_days": 30})
    job = PruneChangeEvents()
    result = await job.run(JobContext(db=db, settings=settings, scheduled_for=datetime.now(UTC), run_id="t"))
    assert result["change_events"] == 4
    assert await names(database_url) == ["acme:1", "acme:29.9", "globex:0"]
    again = await job.run(JobContext(db=db, settings=settings, scheduled_for=datetime.now(UTC), run_id="t2"))
    assert again["change_events"] == 0


def test_the_job_is_registered_like_any_plugin(settings: Settings) -> None:
    from lily.plugins import load_plugins

    jobs = load_plugins(settings).jobs
    assert isinstance(jobs["prune_change_events"], PruneChangeEvents)
    assert Settings(change_events_retention_days=7).change_events_retention_days == 7
