"""The connector registry API: validation, isolation across tenants on every route, write-only
credentials (never in responses or logs), a failing connector's error on its run and in /sources,
retries, scheduled runs, and deletion making owned assets passive."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from typing import Any

import pytest

from lily.scheduler.connectors import ConnectorPolls
from lily.scheduler.loop import Scheduler
from tests.api.helpers import assert_problem, fields_of
from tests.connectors.registry.conftest import Source, crawl, run_due, settle


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_create_get_list_put(client: Any, tenant: Any, source_pg: Source, registered: Any) -> None:
    doc = await registered(
        "postgres", {"dsn": source_pg.dsn, "include_schemas": ["shop"]}, name="warehouse", schedule="*/30 * * * *"
    )
    assert doc["name"] == "warehouse" and doc["type"] == "postgres" and doc["enabled"] is True
    assert doc["schedule"] == "*/30 * * * *" and doc["secrets_set"] == ["dsn"]
    assert doc["config"]["dsn"] is None and doc["config"]["include_schemas"] == ["shop"]
    assert doc["health"]["state"] == "never_run" and doc["health"]["next_run_at"] is not None
    base = f"/connectors/{tenant.tenant_id}"
    r = await client.get(f"{base}/{doc['connector_id']}", headers=tenant.headers())
    assert r.status_code == 200 and r.json()["connector_id"] == doc["connector_id"]
    r = await client.get(base, headers=tenant.headers())
    assert [c["connector_id"] for c in r.json()["items"]] == [doc["connector_id"]]

    # The GET document goes back as it is: the DSN (left null) is kept.
    got = (await client.get(f"{base}/{doc['connector_id']}", headers=tenant.headers())).json()
    got["schedule"] = {"every_seconds": 60}
    got["enabled"] = False
    r = await client.put(f"{base}/{doc['connector_id']}", json=got, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["schedule"] == {"every_seconds": 60} and r.json()["secrets_set"] == ["dsn"]
    assert r.json()["health"]["state"] == "disabled" and r.json()["health"]["next_run_at"] is None

    # Same name twice: 409 naming it; the type cannot change.
    r = await client.post(
        base, json={"name": "warehouse", "type": "postgres", "config": {"dsn": source_pg.dsn}}, headers=tenant.headers()
    )
    assert "name" in fields_of(assert_problem(r, 409))
    got["type"] = "mysql"
    r = await client.put(f"{base}/{doc['connector_id']}", json=got, headers=tenant.headers())
    assert "type" in fields_of(assert_problem(r, 422))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "type": "nope", "config": {}}, "type"),
        ({"name": "x", "type": "openlineage", "config": {}}, "type"),  # not runnable
        ({"name": "x", "type": "postgres", "config": {"host": "db.example.com"}}, "config"),
        ({"name": "x", "type": "postgres", "config": {"dsn": "postgresql://u@h/d", "port": "many"}}, "config.port"),
        ({"name": "x", "type": "postgres", "config": {"dsn": "postgresql://u@h/d", "bogus": 1}}, "config.bogus"),
        (
            {"name": "x", "type": "postgres", "config": {"dsn": "postgresql://u@h/d"}, "schedule": "every day"},
            "schedule",
        ),
        (
            {
                "name": "x",
                "type": "postgres",
                "config": {"dsn": "postgresql://u@h/d"},
                "schedule": {"every_seconds": 1},
            },
            "schedule",
        ),
        ({"name": "", "type": "postgres", "config": {"dsn": "postgresql://u@h/d"}}, "name"),
        ({"name": "x", "type": "mysql", "config": {"dsn": "http://h/d"}}, "config"),
        ({"name": "x", "type": "postgres", "config": {"huge": 10**30}}, "config"),
        ({"name": "x", "type": "postgres", "config": {"dsn": "postgresql://u@h/d\u0000"}}, "config"),
        ({"name": "x", "type": "postgres", "config": {"dsn": "postgresql://u@h/d"}, "enabled": 0}, "enabled"),
    ],
)
async def test_bad_input_is_422_naming_the_field(client: Any, tenant: Any, body: dict[str, Any], field: str) -> None:
    r = await client.post(f"/connectors/{tenant.tenant_id}", json=body, headers=tenant.headers())
    problem = assert_problem(r, 422)
    assert any(f == field or f.startswith(field + ".") for f in fields_of(problem)), problem


async def test_only_admins(client: Any, tenant: Any) -> None:
    for role in ("steward", "editor", "viewer"):
        r = await client.get(f"/connectors/{tenant.tenant_id}", headers=tenant.headers(role))
        assert_problem(r, 403)
    r = await client.get(f"/connectors/{tenant.tenant_id}")
    assert_problem(r, 401)


async def test_every_route_is_isolated_across_tenants(
    client: Any, tenant: Any, other_tenant: Any, source_pg: Source, registered: Any
) -> None:
    doc = await registered("postgres", {"dsn": source_pg.dsn})
    cid, missing = doc["connector_id"], str(uuid.uuid4())
    body = {"name": "n", "type": "postgres", "config": {"dsn": source_pg.dsn}}
    routes = [
        ("POST", "/connectors/{t}", body),
        ("GET", "/connectors/{t}", None),
        ("GET", "/connectors/{t}/{c}", None),
        ("PUT", "/connectors/{t}/{c}", body),
        ("DELETE", "/connectors/{t}/{c}", None),
        ("POST", "/connectors/{t}/{c}/run", None),
        ("GET", "/connectors/{t}/{c}/runs", None),
        ("GET", "/connectors/{t}/{c}/runs/" + str(uuid.uuid4()), None),
    ]
    for method, path, payload in routes:
        # The other tenant's admin, naming this tenant: 404 like a tenant that does not exist.
        theirs = await client.request(
            method, path.format(t=tenant.tenant_id, c=cid), json=payload, headers=other_tenant.headers()
        )
        nobody = await client.request(
            method, path.format(t="no-such-tenant", c=cid), json=payload, headers=other_tenant.headers()
        )
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["title"] == nobody.json()["title"] and theirs.json()["status"] == nobody.json()["status"]
        assert theirs.json()["detail"].replace(tenant.tenant_id, "X") == nobody.json()["detail"].replace(
            "no-such-tenant", "X"
        )
        if "{c}" in path:
            # Their own registry, this tenant's connector id: 404 like an unknown id.
            mine = await client.request(
                method, path.format(t=other_tenant.tenant_id, c=cid), json=payload, headers=other_tenant.headers()
            )
            unknown = await client.request(
                method, path.format(t=other_tenant.tenant_id, c=missing), json=payload, headers=other_tenant.headers()
            )
            assert mine.status_code == unknown.status_code == 404, (method, path, mine.text)
            assert mine.json()["detail"].replace(cid, "X") == unknown.json()["detail"].replace(missing, "X")
    r = await client.get(f"/connectors/{tenant.tenant_id}/{cid}", headers=tenant.headers())
    assert r.status_code == 200  # untouched by all of that
    r = await client.get(f"/connectors/{other_tenant.tenant_id}", headers=other_tenant.headers())
    assert r.json()["items"] == []
    r = await client.get(f"/tenants/{other_tenant.tenant_id}/sources", headers=other_tenant.headers())
    assert all(s["kind"] != "connector" for s in r.json()["inbound"])


async def test_credentials_never_in_responses_or_logs(
    client: Any,
    app: Any,
    polls: ConnectorPolls,
    tenant: Any,
    source_pg: Source,
    registered: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    source_pg.execute("CREATE TABLE public.t (id int)")
    seen: list[str] = []
    doc = await registered("postgres", {"dsn": source_pg.dsn})
    seen.append(str(doc))
    cid = doc["connector_id"]
    run = await crawl(client, app, polls, tenant, cid)
    assert run["state"] == "succeeded", run
    seen.append(str(run))
    # Separate fields, the password among them, and a failing one whose error mentions the target.
    sep = await registered(
        "postgres",
        {
            "host": source_pg.host,
            "port": closed_port(),
            "database": "x",
            "user": source_pg.user,
            "password": source_pg.password,
        },
    )
    assert sep["config"]["password"] is None and sep["secrets_set"] == ["password"]
    seen.append(str(sep))
    failed = await crawl(client, app, polls, tenant, sep["connector_id"])
    assert failed["state"] == "failed"
    seen.append(str(failed))
    bad = await client.post(
        f"/connectors/{tenant.tenant_id}",
        json={"name": "bad", "type": "postgres", "config": {"dsn": source_pg.dsn, "port": "x"}},
        headers=tenant.headers(),
    )
    seen.append(bad.text)
    for path in (
        f"/connectors/{tenant.tenant_id}",
        f"/connectors/{tenant.tenant_id}/{cid}",
        f"/connectors/{tenant.tenant_id}/{cid}/runs",
        f"/tenants/{tenant.tenant_id}/sources",
    ):
        seen.append((await client.get(path, headers=tenant.headers())).text)
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT config::text AS c, config_sealed FROM connectors")
        stored = await cur.fetchall()
        cur = await conn.execute("SELECT payload::text AS p FROM events")
        events = [r["p"] for r in await cur.fetchall()]
    for text in [*seen, caplog.text, *events, *(r["c"] for r in stored), *(r["config_sealed"] or "" for r in stored)]:
        assert source_pg.password not in text
    assert all(r["config_sealed"] for r in stored)  # sealed, not absent


async def test_a_failing_connector_reports_and_retries_without_blocking_others(
    client: Any, app: Any, polls: ConnectorPolls, tenant: Any, source_pg: Source, registered: Any
) -> None:
    source_pg.execute("CREATE TABLE public.t (id int)")
    broken = await registered(
        "postgres", {"dsn": f"postgresql://u:secretpw@127.0.0.1:{closed_port()}/db"}, schedule={"every_seconds": 3600}
    )
    healthy = await registered("postgres", {"dsn": source_pg.dsn})
    base = f"/connectors/{tenant.tenant_id}"
    for c in (broken, healthy):
        r = await client.post(f"{base}/{c['connector_id']}/run", headers=tenant.headers())
        assert r.status_code == 202
    assert await run_due(app, polls) == 2
    await settle(app.state.runtime.db, tenant.tenant_id)
    runs = (await client.get(f"{base}/{broken['connector_id']}/runs", headers=tenant.headers())).json()["items"]
    assert runs[0]["state"] == "failed" and "connection" in runs[0]["error"].lower()
    assert "secretpw" not in runs[0]["error"]
    ok = (await client.get(f"{base}/{healthy['connector_id']}/runs", headers=tenant.headers())).json()["items"]
    assert ok[0]["state"] == "succeeded" and ok[0]["created"] == 2  # public + t

    doc = (await client.get(f"{base}/{broken['connector_id']}", headers=tenant.headers())).json()
    health = doc["health"]
    assert health["state"] == "failing" and health["consecutive_failures"] == 1
    assert health["last_error"] == runs[0]["error"]
    # Retried with backoff (0.2 s here), well before the hourly schedule.
    assert health["next_run_at"] is not None
    sources = (await client.get(f"/tenants/{tenant.tenant_id}/sources", headers=tenant.headers("viewer"))).json()
    (listed,) = [s for s in sources["inbound"] if s["id"] == broken["connector_id"]]
    assert listed["health"]["state"] == "failing" and listed["health"]["last_error"] == runs[0]["error"]

    deadline = time.monotonic() + 20
    while True:
        await run_due(app, polls)
        runs = (await client.get(f"{base}/{broken['connector_id']}/runs", headers=tenant.headers())).json()["items"]
        if len(runs) >= 2:
            break
        assert time.monotonic() < deadline, runs
        await asyncio.sleep(0.1)
    assert runs[0]["trigger"] == "retry" and runs[0]["attempt"] == 2 and runs[0]["state"] == "failed"


async def test_lilys_own_database_is_refused(
    client: Any, app: Any, polls: ConnectorPolls, tenant: Any, database_url: str, registered: Any
) -> None:
    from psycopg.conninfo import conninfo_to_dict

    own = conninfo_to_dict(database_url)
    if str(own.get("host", "/")).startswith("/"):
        pytest.skip("Lily's test database is on a Unix socket")
    dsn = f"postgresql://postgres@{own['host']}:{own.get('port') or 5432}/{own['dbname']}"
    doc = await registered("postgres", {"dsn": dsn})
    run = await crawl(client, app, polls, tenant, doc["connector_id"])
    assert run["state"] == "failed" and "Lily's own database" in run["error"] and run["seen"] == 0


async def test_private_targets_are_refused_by_default(
    client: Any, app: Any, tenant: Any, source_pg: Source, registered: Any, polls: ConnectorPolls
) -> None:
    doc = await registered("postgres", {"dsn": source_pg.dsn})
    app.state.runtime.settings = app.state.runtime.settings.model_copy(update={"allow_private_targets": False})
    run = await crawl(client, app, polls, tenant, doc["connector_id"])
    assert run["state"] == "failed" and "LILY_ALLOW_PRIVATE_TARGETS" in run["error"]


async def test_a_scheduled_run_happens(
    app: Any, tenant: Any, source_pg: Source, registered: Any, settings: Any
) -> None:
    source_pg.execute("CREATE TABLE public.t (id int)")
    doc = await registered("postgres", {"dsn": source_pg.dsn}, schedule={"every_seconds": 10})
    runtime = app.state.runtime
    # The scheduler itself, leading, with the real job plugin: the first due time is 10 s out.
    scheduler = Scheduler(runtime.db, runtime.settings, {"connector_polls": ConnectorPolls()})
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        deadline = time.monotonic() + 40
        while True:
            async with runtime.db.tenant(tenant.tenant_id) as conn:
                cur = await conn.execute(
                    "SELECT trigger, state, created FROM connector_runs"
                    " WHERE connector_id = %s AND state = 'succeeded'",
                    [doc["connector_id"]],
                )
                done = await cur.fetchall()
            if done:
                break
            assert time.monotonic() < deadline, "no scheduled run within 40 s"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert done[0]["trigger"] == "schedule" and done[0]["created"] == 2


async def test_delete_makes_owned_assets_passive(
    client: Any, app: Any, polls: ConnectorPolls, tenant: Any, source_pg: Source, registered: Any
) -> None:
    source_pg.execute("CREATE TABLE public.t (id int); CREATE TABLE public.u (id int)")
    doc = await registered("postgres", {"dsn": source_pg.dsn})
    await crawl(client, app, polls, tenant, doc["connector_id"])
    db = app.state.runtime.db
    source = f"connector:{doc['connector_id']}"

    async def owned() -> list[dict[str, Any]]:
        async with db.tenant(tenant.tenant_id) as conn:
            cur = await conn.execute(
                "SELECT qualified_name, has_active_source FROM assets WHERE source = %s ORDER BY 1", [source]
            )
            return await cur.fetchall()

    before = await owned()
    assert len(before) == 3 and all(r["has_active_source"] for r in before)
    r = await client.delete(f"/connectors/{tenant.tenant_id}/{doc['connector_id']}", headers=tenant.headers())
    assert r.status_code == 204
    await settle(db, tenant.tenant_id)
    after = await owned()
    assert [r["qualified_name"] for r in after] == [r["qualified_name"] for r in before]
    assert not any(r["has_active_source"] for r in after)
    r = await client.get(f"/connectors/{tenant.tenant_id}/{doc['connector_id']}", headers=tenant.headers())
    assert_problem(r, 404)


async def test_a_deleted_tenants_connectors_never_run(
    client: Any, app: Any, polls: ConnectorPolls, tenant: Any, source_pg: Source, registered: Any
) -> None:
    from lily import admin

    doc = await registered("postgres", {"dsn": source_pg.dsn}, schedule={"every_seconds": 10})
    r = await client.post(f"/connectors/{tenant.tenant_id}/{doc['connector_id']}/run", headers=tenant.headers())
    assert r.status_code == 202
    db = app.state.runtime.db
    async with db.tenant(tenant.tenant_id) as conn:  # due now, too
        await conn.execute("UPDATE connectors SET next_run_at = now() - interval '1 minute'")
    await admin.delete_tenant(db, tenant.tenant_id)
    assert await run_due(app, polls) == 0
    async with db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT state FROM connector_runs")
        assert [r["state"] for r in await cur.fetchall()] == ["queued"]
