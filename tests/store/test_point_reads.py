"""A point read of an asset searches an index for its id, whatever the planner knows of the table.

Autovacuum may be off, or may not yet have run after a load; on a table without statistics the planner
once priced the tenant's slice of a partial index the same as the primary key and took it, so every
``GET /metadata/{id}`` filtered all of the tenant's assets (1,758 buffers per read at 2,000 assets).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from lily.store.assets import _BY_ID
from lily.store.db import APP_ROLE


async def test_a_point_read_uses_the_primary_key_on_a_table_without_statistics(
    database_url: str, client: Any, tenant: Any
) -> None:
    created = []
    for i in range(3):
        answer = await client.post(
            "/metadata", json={"qualified_name": f"pg://db/s/t{i}", "type": "table"}, headers=tenant.headers("editor")
        )
        assert answer.status_code == 201, answer.text
        created.append(answer.json()["asset_id"])
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        # What the planner knows of a table nobody has analyzed (rolled back with the transaction).
        conn.execute("UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE oid = 'assets'::regclass")
        conn.execute("DELETE FROM pg_statistic WHERE starelid = 'assets'::regclass")
        conn.execute(f"SET LOCAL ROLE {APP_ROLE}")
        conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [tenant.tenant_id])
        plan = "\n".join(
            row["QUERY PLAN"] for row in conn.execute(f"EXPLAIN {_BY_ID}", [tenant.tenant_id, created[1]]).fetchall()
        )
        # The asset's id is a condition of the index search (the primary key's, or on PostgreSQL 18 a skip
        # scan of ``assets_type`` that costs the same on a table without statistics), never a filter.
        index_cond = plan.split("Index Cond:")[1].splitlines()[0]
        assert f"asset_id = '{created[1]}'" in index_cond, plan
        assert "asset_id = " not in plan.split("Filter:")[-1] or "Filter:" not in plan, plan
        # The query itself still answers the asset asked for.
        row = conn.execute(_BY_ID, [tenant.tenant_id, created[1]]).fetchone()
        assert row is not None and str(row["asset_id"]) == created[1]
        conn.rollback()


async def test_a_deleted_asset_reads_as_missing_unless_asked_for(client: Any, tenant: Any) -> None:
    answer = await client.post(
        "/metadata", json={"qualified_name": "pg://db/s/gone", "type": "table"}, headers=tenant.headers("editor")
    )
    asset_id = answer.json()["asset_id"]
    assert (await client.delete(f"/metadata/{asset_id}", headers=tenant.headers("editor"))).status_code in (200, 204)
    assert (await client.get(f"/metadata/{asset_id}", headers=tenant.headers("editor"))).status_code == 404
    kept = await client.get(
        f"/metadata/{asset_id}", params={"include_deleted": "true"}, headers=tenant.headers("editor")
    )
    assert kept.status_code == 200 and kept.json()["deleted_at"] is not None


async def test_a_writes_outcome_reads_its_version_by_the_primary_key(
    database_url: str, client: Any, tenant: Any
) -> None:
    editor = tenant.headers("editor")
    for i in range(3):
        answer = await client.post(
            "/metadata", json={"qualified_name": f"pg://db/s/v{i}", "type": "table"}, headers=editor
        )
        assert answer.status_code == 201, answer.text
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        event = conn.execute(
            "SELECT event_id, result FROM events WHERE tenant_id = %s ORDER BY seq DESC LIMIT 1", [tenant.tenant_id]
        ).fetchone()
        assert event is not None
        plans: list[str] = []
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        # The plan of the statement inside lily_write_outcome, sent to this client as a notice.
        conn.execute("LOAD 'auto_explain'")
        conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
            " SET auto_explain.log_level = notice"
        )
        # A few rows cost nothing to scan; what matters is that the index can be used at all, which a
        # join condition on a function that is not LEAKPROOF forbids under row-level security. With the
        # other ways priced out, the planner shows whether it can.
        conn.execute("SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_seqscan = off")
        conn.execute(f"SET ROLE {APP_ROLE}")
        row = conn.execute(
            "SELECT * FROM lily_write_outcome(%s, NULL, NULL, %s)", [tenant.tenant_id, event["event_id"]]
        ).fetchone()
        assert row is not None and row["status"] == "applied"
        assert row["snapshot"]["asset_id"] == event["result"]["asset_id"]
        assert row["snapshot"]["version"] == event["result"]["version"] == 1
        (plan,) = [p for p in plans if "Query Text: SELECT v.snapshot" in p]
        versions = plan.split("asset_versions_pkey on asset_versions v")[1]
        assert "asset_id = " in versions.split("Index Cond:")[1].splitlines()[0], plan
