"""Row-level security, checked in the catalog and in practice.

Every table in ``public`` with a ``tenant_id`` column must have RLS enabled and forced, and a policy
keyed on ``lily.tenant_id``; the application role must own nothing and be unable to bypass RLS; and a
query with no tenant set must see no rows at all.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from lily import admin
from lily.store.db import APP_ROLE, PIPELINE_ROLE

TENANT_TABLES = """
SELECT c.oid, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""

POLICIES = """
SELECT pol.polname, pol.polcmd, pol.polpermissive,
       pg_get_expr(pol.polqual, pol.polrelid) AS qual,
       pg_get_expr(pol.polwithcheck, pol.polrelid) AS with_check,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END FROM unnest(pol.polroles) r) AS roles
FROM pg_policy pol WHERE pol.polrelid = %s
"""


def tenant_tables(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    return conn.execute(TENANT_TABLES).fetchall()


def test_every_tenant_table_is_guarded(database_url: str) -> None:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        tables = tenant_tables(conn)
        names = {t["relname"] for t in tables}
        # The check would pass vacuously if the query found nothing: the core tables must be among them.
        assert {
            "tenants",
            "users",
            "api_keys",
            "revoked_tokens",
            "assets",
            "asset_versions",
            "audit_log",
            "events",
            "idempotency_keys",
        } <= names
        failures = []
        for t in tables:
            if not t["relrowsecurity"]:
                failures.append(f"{t['relname']}: row level security is not enabled")
            if not t["relforcerowsecurity"]:
                failures.append(f"{t['relname']}: row level security is not forced")
            policies = conn.execute(POLICIES, [t["oid"]]).fetchall()
            app_policies = [p for p in policies if {"public", APP_ROLE} & set(p["roles"])]
            if not app_policies:
                failures.append(f"{t['relname']}: no policy applies to {APP_ROLE}")
            for p in app_policies:
                if not p["polpermissive"]:
                    continue  # a restrictive policy only narrows what the permissive ones let through
                # Every policy the application role falls under must be keyed on the tenant setting.
                for expr in ("qual", "with_check"):
                    if p[expr] is not None and "lily.tenant_id" not in p[expr]:
                        failures.append(f"{t['relname']}.{p['polname']}: {expr} ignores lily.tenant_id: {p[expr]}")
                if p["qual"] is None and p["polcmd"] != "a":
                    failures.append(f"{t['relname']}.{p['polname']}: no USING clause")
        assert not failures, "\n".join(failures)


def test_application_roles_own_nothing_and_cannot_bypass_rls(database_url: str) -> None:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        for role in (APP_ROLE, PIPELINE_ROLE):
            row = conn.execute(
                "SELECT rolsuper, rolbypassrls, rolcanlogin, rolcreaterole, rolcreatedb"
                " FROM pg_roles WHERE rolname = %s",
                [role],
            ).fetchone()
            assert row is not None, f"migrations did not create {role}"
            assert row == {
                "rolsuper": False,
                "rolbypassrls": False,
                "rolcanlogin": False,
                "rolcreaterole": False,
                "rolcreatedb": False,
            }, (role, row)
            owned = conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relowner = %s::regrole AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
                [role],
            ).fetchall()
            assert owned == [], f"{role} owns {owned}"
            # Nor does it inherit those powers from a role it belongs to.
            inherited = conn.execute(
                "WITH RECURSIVE up(oid) AS (SELECT %s::regrole::oid UNION"
                " SELECT m.roleid FROM pg_auth_members m JOIN up ON m.member = up.oid)"
                " SELECT r.rolname FROM up JOIN pg_roles r ON r.oid = up.oid"
                " WHERE r.rolsuper OR r.rolbypassrls OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid"
                " AND c.relnamespace = 'public'::regnamespace)",
                [role],
            ).fetchall()
            assert inherited == [], f"{role} belongs to {inherited}"


async def test_the_pool_runs_queries_as_the_app_role(db: Any) -> None:
    async with db.tenant("acme") as conn:
        row = await (await conn.execute("SELECT current_user AS u, current_setting('lily.tenant_id') AS t")).fetchone()
    assert row == {"u": APP_ROLE, "t": "acme"}
    async with db.system() as conn:
        row = await (await conn.execute("SELECT current_user AS u")).fetchone()
    assert row == {"u": APP_ROLE}


@pytest.fixture
async def populated(app: Any, client: Any, tenant: Any, other_tenant: Any) -> list[str]:
    """Both tenants with users, keys, assets, versions, audit entries, events and a revoked token."""
    runtime = app.state.runtime
    for t in (tenant, other_tenant):
        await admin.create_user(runtime.db, t.tenant_id, "alice", "a-long-password", "editor")
        for i in range(3):
            r = await client.post(
                "/metadata", json={"qualified_name": f"pg://x/t{i}", "type": "table"}, headers=t.headers("editor")
            )
            assert r.status_code == 201, r.text
        r = await client.post(
            "/auth/login", json={"tenant_id": t.tenant_id, "username": "alice", "password": "a-long-password"}
        )
        token = r.json()["access_token"]
        assert (await client.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})).status_code == 204
    return [tenant.tenant_id, other_tenant.tenant_id]


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


def test_no_tenant_sees_no_rows_and_no_tenant_writes_anothers(database_url: str, populated: list[str]) -> None:
    populated_tables = {
        "tenants",
        "users",
        "api_keys",
        "revoked_tokens",
        "assets",
        "asset_versions",
        "audit_log",
        "events",
    }
    with psycopg.connect(database_url, row_factory=dict_row) as owner:
        tables = [t["relname"] for t in tenant_tables(owner)]

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"SET ROLE {APP_ROLE}")
        # Never set in this session: current_setting(..., true) is NULL.
        for table in tables:
            assert count(conn, table) == 0, f"{table} shows rows with no tenant set"
        # Each tenant sees exactly its own rows.
        for tenant_id in populated:
            with conn.transaction():
                conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [tenant_id])
                for table in populated_tables:
                    assert count(conn, table) > 0, (tenant_id, table)
                    others = conn.execute(
                        sql.SQL("SELECT count(*) FROM {} WHERE tenant_id <> %s").format(sql.Identifier(table)),
                        [tenant_id],
                    ).fetchone()
                    assert others is not None and others[0] == 0
        # After a transaction-local setting ends it reads as '' — still no rows.
        assert conn.execute("SELECT current_setting('lily.tenant_id', true)").fetchone() == ("",)
        for table in tables:
            assert count(conn, table) == 0, f"{table} shows rows after the tenant's transaction ended"
        # The app role cannot switch RLS off or step around it.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET row_security = off; SELECT count(*) FROM assets")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE assets NO FORCE ROW LEVEL SECURITY")
    check_writes_cannot_cross_tenants(database_url, *populated)


def check_writes_cannot_cross_tenants(database_url: str, mine: str, theirs: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"SET ROLE {APP_ROLE}")
        with conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [mine])
            assert count(conn, "assets") == 3
            # Updating or deleting another tenant's rows touches nothing.
            assert conn.execute("UPDATE assets SET description = 'x' WHERE tenant_id = %s", [theirs]).rowcount == 0
            assert conn.execute("DELETE FROM audit_log WHERE tenant_id = %s", [theirs]).rowcount == 0
            # Moving one's own row to another tenant is refused.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [mine])
            conn.execute("UPDATE assets SET tenant_id = %s", [theirs])
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [mine])
            conn.execute("INSERT INTO audit_log (tenant_id, action, actor) VALUES (%s, 'x', 'y')", [theirs])
        # With no tenant set, nothing can be written at all.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("INSERT INTO audit_log (tenant_id, action, actor) VALUES (%s, 'x', 'y')", [mine])


async def test_auth_lookups_leave_no_tenant_behind_on_the_connection(app: Any, tenant: Any, other_tenant: Any) -> None:
    """The one-round-trip auth functions set the tenant for their own statement only."""
    from lily.auth.tokens import hash_secret
    from lily.store import identity

    _, key_id, secret = tenant.keys["viewer"].split(".")
    limits = app.state.runtime.rate_limits
    lookup = {"kind": "key", "name": key_id, "jti": None, "sid": None, "secret_hash": hash_secret(secret)}
    async with app.state.runtime.db.connection() as conn:
        found = await identity.authenticate(conn, tenant.tenant_id, **lookup, limits=limits)
        assert found["status"] == "ok" and found["role"] == "viewer"
        row = await (await conn.execute("SELECT current_setting('lily.tenant_id', true) AS t")).fetchone()
        assert row is not None and row["t"] in ("", None)
        assert (await (await conn.execute("SELECT count(*) AS n FROM api_keys")).fetchone())["n"] == 0
        # A key id looked up under another tenant is not found: RLS and the explicit filter both apply.
        elsewhere = await identity.authenticate(conn, other_tenant.tenant_id, **lookup, limits=limits)
        assert elsewhere["status"] == "unknown"


def test_the_search_role_is_confined_to_reading_assets_through_its_functions(database_url: str) -> None:
    """lily_search bypasses RLS so search predicates can use their indexes (migration 0006): it must be
    reachable only through its functions, which take the tenant from lily.tenant_id and nowhere else."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolcanlogin, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
            " WHERE rolname = 'lily_search'"
        ).fetchone()
        assert role == {
            "rolsuper": False,
            "rolcanlogin": False,
            "rolcreaterole": False,
            "rolcreatedb": False,
            "rolbypassrls": True,
        }
        # Nobody can become it, and it is a member of nothing.
        members = conn.execute(
            "SELECT member::regrole::text, roleid::regrole::text FROM pg_auth_members"
            " WHERE roleid = 'lily_search'::regrole OR member = 'lily_search'::regrole"
        ).fetchall()
        assert members == []
        owned = conn.execute("SELECT relname FROM pg_class WHERE relowner = 'lily_search'::regrole").fetchall()
        assert owned == []
        # It may read assets, the access policies that hide some of them (0008) and their epochs (0015), and
        # the tenants' name words and the names holding them for typo matching (0012, 0020), and nothing else.
        grants = conn.execute(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants WHERE grantee = 'lily_search'"
            " ORDER BY table_name"
        ).fetchall()
        assert grants == [
            {"table_name": "access_policies", "privilege_type": "SELECT"},
            {"table_name": "access_policy_epochs", "privilege_type": "SELECT"},
            {"table_name": "asset_name_tokens", "privilege_type": "SELECT"},
            {"table_name": "asset_name_words", "privilege_type": "SELECT"},
            {"table_name": "assets", "privilege_type": "SELECT"},
        ]
        functions = conn.execute(
            "SELECT p.proname, p.prosecdef, p.proconfig, p.prosrc, pg_get_function_identity_arguments(p.oid) AS args,"
            " has_function_privilege('lily_app', p.oid, 'EXECUTE') AS app,"
            " has_function_privilege('public', p.oid, 'EXECUTE') AS public"
            " FROM pg_proc p WHERE p.proowner = 'lily_search'::regrole ORDER BY p.proname"
        ).fetchall()
        assert {f["proname"] for f in functions} >= {"lily_search_page", "lily_search_count", "lily_search_facets"}
        for f in functions:
            assert any(c.startswith("search_path=") for c in f["proconfig"] or []), f["proname"]
            assert "tenant" not in f["args"], f"{f['proname']} takes a tenant argument: {f['args']}"
            assert not f["public"], f"{f['proname']} is executable by PUBLIC"
            # The app calls exactly the definer functions; the helpers only run inside them.
            assert f["app"] == f["prosecdef"], f["proname"]
        # The only place a tenant comes from is the transaction's setting.
        # (0008 kept the filters' WHERE as lily_search_filters; lily_search_where adds the read rule to it.)
        where = " ".join(f["prosrc"] for f in functions if f["proname"] in ("lily_search_where", "lily_search_filters"))
        assert "current_setting('lily.tenant_id', true)" in where
