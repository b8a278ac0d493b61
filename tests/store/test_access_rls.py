"""The read rule of access policies in the database (migration 0008): who it hides rows from, who it
never touches, and that the caller's policies are computed once per statement."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from lily.domain.access import Caller
from lily.store import access as access_store
from lily.store.db import Database

A, B = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"


def seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('t1', 't1'), ('t2', 't2')")
        for tenant in ("t1", "t2"):
            conn.execute(
                "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, version, created_at,"
                " updated_at, tags) VALUES (%s, %s, 'pg://x/a', 'table', 'a', 1, now(), now(), '{pii}'),"
                " (%s, %s, 'pg://x/b', 'table', 'b', 1, now(), now(), '{}')",
                [tenant, A, tenant, B],
            )
            conn.execute(
                "INSERT INTO classifications (tenant_id, asset_id, classification, source, applied_by, applied_at)"
                " VALUES (%s, %s, 'PII', 'manual', 'x', now()), (%s, %s, 'PII', 'manual', 'x', now())",
                [tenant, A, tenant, B],
            )
        conn.execute(
            "INSERT INTO access_policies (tenant_id, name, effect, actions, principals, except_principals, tags,"
            " created_by, updated_by) VALUES ('t1', 'no pii', 'deny', '{read}', '{everyone}', '{group:privacy}',"
            " '{pii}', 'x', 'x')"
        )


async def names(db: Database, sql: str, caller: Caller | None) -> list[Any]:
    async with db.tenant("t1", caller) as conn:
        return [r["asset_id"] for r in await (await conn.execute(sql)).fetchall()]


async def test_hidden_from_callers_the_policy_names_only(database_url):
    seed(database_url)
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        viewer = Caller("viewer", ("everyone", "role:viewer", "user:v"))
        privacy = Caller("viewer", ("everyone", "role:viewer", "user:p", "group:privacy"))
        admin = Caller("admin", ("everyone", "role:admin", "user:root"))
        for table in ("assets", "classifications"):
            sql = f"SELECT asset_id::text FROM {table} ORDER BY asset_id"
            assert await names(db, sql, viewer) == [B], table
            assert await names(db, sql, privacy) == [A, B], table
            assert await names(db, sql, admin) == [A, B], table
            assert await names(db, sql, None) == [A, B], table  # internal work (no caller) sees all
        # The same asset of another tenant is untouched by this tenant's policy.
        async with db.tenant("t2", viewer) as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM assets")
            assert (await cur.fetchone())["n"] == 2
    finally:
        await db.close()


def test_the_rule_binds_the_application_role_only(database_url):
    """The pipeline reads assets as lily_app with no caller set (covered above) or as lily_pipeline:
    neither is ever narrowed by a caller's policies."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT polrelid::regclass::text AS tbl, polpermissive, polcmd,"
            " ARRAY(SELECT r::regrole::text FROM unnest(polroles) r) AS roles"
            " FROM pg_policy WHERE polname = 'access_read' ORDER BY 1"
        ).fetchall()
    assert rows == [
        {"tbl": "assets", "polpermissive": False, "polcmd": "r", "roles": ["lily_app"]},
        {"tbl": "classifications", "polpermissive": False, "polcmd": "r", "roles": ["lily_app"]},
    ]


def test_policies_are_read_once_per_statement_and_the_primary_key_still_serves(database_url):
    seed(database_url)
    with psycopg.connect(database_url, row_factory=dict_row) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE lily_app")
        conn.execute(
            "SELECT set_config('lily.tenant_id', 't1', true), set_config('lily.access_role', 'viewer', true),"
            " set_config('lily.access_names', '{everyone}', true)"
        )
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r["QUERY PLAN"]
            for r in conn.execute(
                f"EXPLAIN SELECT * FROM assets WHERE tenant_id = 't1' AND asset_id = '{B}'"
            ).fetchall()
        )
    assert "InitPlan" in plan and "Index" in plan, plan
    assert "SubPlan" not in plan, plan  # nothing re-evaluated per row


async def test_search_applies_the_same_rule_as_row_level_security(database_url):
    """Search compiles the rule to literals (merged, grouped, implied arms dropped): for a mix of selectors
    its matches must be exactly the rows RLS lets the caller read, in pages, counts and facets."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('t1', 't1')")
        conn.execute(
            "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, version, created_at, updated_at,"
            " tags, classifications)"
            " SELECT 't1', gen_random_uuid(), 'pg://h/s' || (i % 4) || '.t' || i,"
            " (ARRAY['table','view','topic'])[i % 3 + 1], 't' || i, 1, now(), now(), ARRAY['k' || (i % 5)],"
            " CASE WHEN i % 7 = 0 THEN '{PII,PII.Email}'::text[] ELSE '{}' END FROM generate_series(1, 300) i"
        )
        # Prefixes compile to left(qualified_name, n) = ANY (…) per length (0015): characters, not bytes,
        # and no LIKE metacharacters.
        conn.execute(
            "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, version, created_at, updated_at)"
            " SELECT 't1', gen_random_uuid(), q, 'file', 'u' || n, 1, now(), now()"
            " FROM unnest(ARRAY['pg://ü/_%a', 'pg://ü/x%a', 'pg://üx/a', 'pg://ü/_%', 'pg://u/_%a']) WITH ORDINALITY"
            " AS x(q, n)"
        )
        one = conn.execute("SELECT asset_id FROM assets WHERE name = 't10'").fetchone()
        assert one is not None
        rules = [
            ("{k1}", None, None, None, None),  # a tag
            ("{k2}", "{view}", None, None, None),  # tag and type
            ("{k1}", "{topic}", None, None, None),  # implied by the first
            (None, None, "pg://h/s3.", None, None),  # a prefix
            (None, "{table}", "pg://h/s2.", None, None),  # prefix and type
            (None, None, None, "{PII}", None),  # a classification (parents expanded)
            (None, None, None, None, [one[0]]),  # an id
            (None, None, "pg://ü/_%", None, None),  # a prefix with LIKE's metacharacters, not a pattern
            (None, None, "pg://üx", None, None),  # another length
        ]
        for n, (tags, types, prefix, classes, ids) in enumerate(rules):
            conn.execute(
                "INSERT INTO access_policies (tenant_id, name, effect, actions, principals, tags, types,"
                " qualified_name_prefix, classifications, asset_ids, created_by, updated_by)"
                " VALUES ('t1', %s, 'deny', '{read}', '{everyone}', %s, %s, %s, %s, %s, 'x', 'x')",
                [f"r{n}", tags, types, prefix, classes, ids],
            )
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        caller = Caller("viewer", ("everyone", "role:viewer"))
        async with db.tenant("t1", caller) as conn:

            async def rows(sql: str) -> list[dict[str, Any]]:
                return await (await conn.execute(sql)).fetchall()

            visible = {r["asset_id"] for r in await rows("SELECT asset_id FROM assets")}
            found = await rows("SELECT asset_id FROM lily_search_page('{}', 'name', NULL, 1001, 10)")
            (counted,) = await rows("SELECT lily_search_count('{}', 1000) AS n")
            facets = await rows("SELECT value, n FROM lily_search_facets('{}', '{type}', 10, 1000)")
            by_type = await rows("SELECT type, count(*) AS n FROM assets GROUP BY type")
            files = await rows("SELECT name FROM assets WHERE type = 'file'")
        assert 0 < len(visible) < 305
        assert {r["name"] for r in files} == {"u2", "u5"}
        assert {r["asset_id"] for r in found} == visible
        assert counted["n"] == len(visible)
        assert {r["value"]: r["n"] for r in facets} == {r["type"]: r["n"] for r in by_type}
    finally:
        await db.close()


async def test_a_policy_change_applies_to_the_next_search_on_every_connection(database_url):
    """The compiled rule is kept per connection under the tenant's policy epoch (migration 0015). Two pools
    of one connection each stand for two API processes: both have the rule cached when a policy changes
    through one of them, or by an operator's SQL, and the very next search on either applies the change.
    Two callers alternating on one connection each keep their own rule."""
    seed(database_url)
    viewer = Caller("viewer", ("everyone", "role:viewer", "user:v"))
    privacy = Caller("viewer", ("everyone", "role:viewer", "user:p", "group:privacy"))
    first, second = (Database(database_url, min_size=1, max_size=1) for _ in range(2))
    await first.open()
    await second.open()

    async def found(db: Database, caller: Caller) -> list[str]:
        async with db.tenant("t1", caller) as conn:
            cur = await conn.execute("SELECT asset_id::text AS id FROM lily_search_page('{}', 'name', NULL, 10, 10)")
            return sorted(r["id"] for r in await cur.fetchall())

    try:
        for db in (first, second, first, second):
            assert await found(db, viewer) == [B]
            assert await found(db, privacy) == [A, B]
        async with second.tenant("t1") as conn:  # both callers' rules are kept on the connection
            cur = await conn.execute(
                "SELECT count(*) AS n FROM generate_series(0, 15) i"
                " WHERE current_setting('lily.read_rule_' || i, true) > ''"
            )
            assert (await cur.fetchone())["n"] in (1, 2)  # two slots, or one if their keys share it
        async with first.tenant("t1") as conn:
            policy = await access_store.all_policies(conn, "t1")
            assert await access_store.delete(conn, "t1", policy[0]["policy_id"]) is not None
        assert await found(second, viewer) == [A, B]
        assert await found(first, viewer) == [A, B]
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO access_policies (tenant_id, name, effect, actions, principals, qualified_name_prefix,"
                " created_by, updated_by) VALUES ('t1', 'none', 'deny', '{read}', '{user:v}', 'pg://x/', 'x', 'x')"
            )
        assert await found(second, viewer) == []
        assert await found(first, viewer) == []
        assert await found(second, privacy) == [A, B]
        # A change made earlier in the same transaction applies to the searches after it.
        async with first.tenant("t1", viewer) as conn, conn.transaction(force_rollback=True):
            await conn.execute("UPDATE access_policies SET qualified_name_prefix = 'pg://x/a' WHERE tenant_id = 't1'")
            cur = await conn.execute("SELECT asset_id::text AS id FROM lily_search_page('{}', 'name', NULL, 10, 10)")
            assert [r["id"] for r in await cur.fetchall()] == [B]
        assert await found(second, viewer) == []
    finally:
        await first.close()
        await second.close()
