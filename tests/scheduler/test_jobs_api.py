"""``/admin/jobs``: who may see and run what, what a tenant sees of deployment-wide runs, pagination,
run-now through the in-process scheduler of ``lily serve``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from psycopg.types.json import Jsonb

from lily.api.app import create_app
from lily.config import Settings
from lily.scheduler.loop import Scheduler
from lily.store.db import Database, as_pipeline
from lily.store.jobs import leader_status
from tests.pipeline.support import until

from .conftest import JOB_PLUGINS, OPERATOR_TOKEN

PROBLEM = "application/problem+json"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
ROUTES = [
    ("GET", "/admin/jobs"),
    ("GET", "/admin/jobs/test_beat/runs"),
    ("GET", f"/admin/jobs/test_beat/runs/{uuid.uuid4()}"),
    ("POST", "/admin/jobs/test_beat/run"),
]


@pytest.fixture
def job_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ``lily_test_jobs`` distribution on the path, so the registry finds ``test_beat``."""
    monkeypatch.syspath_prepend(str(JOB_PLUGINS))
    yield


@pytest.fixture
def settings(settings: Settings, job_plugins: None) -> Settings:
    return settings  # depending on job_plugins puts the plugin on the path before the app loads plugins


async def add_run(db: Database, job: str = "test_beat", *, tenant_id: str | None = None, **values: Any) -> str:
    row = {
        "run_id": uuid.uuid4(),
        "job": job,
        "tenant_id": tenant_id,
        "trigger": "schedule",
        "scheduled_for": datetime.now(UTC).replace(microsecond=0),
        "state": "failed",
        "runner": "host:1:abc",
        "started_at": datetime.now(UTC),
        "finished_at": datetime.now(UTC),
        "error": "RuntimeError: secret detail of some tenant",
        "result": None,
        **values,
    }
    async with db.system() as conn:
        await as_pipeline(conn)
        await conn.execute(
            f"INSERT INTO job_runs ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
            [Jsonb(v) if k == "result" and v is not None else v for k, v in row.items()],
        )
    return str(row["run_id"])


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


async def test_every_route_needs_a_tenant_admin_or_the_operator(client: Any, tenant: Any) -> None:
    for method, path in ROUTES:
        problem(await client.request(method, path), 401)
        problem(await client.request(method, path, headers={"Authorization": "Bearer not-the-operator"}), 401)
        for role in ("viewer", "editor", "steward"):
            body = problem(await client.request(method, path, headers=tenant.headers(role)), 403)
            assert "admin" in body["detail"]


async def test_without_an_operator_token_configured_the_operator_token_is_refused(
    settings: Settings, database_url: str
) -> None:
    app = create_app(settings.model_copy(update={"operator_token": None}), database_url, run_workers=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as client:
            problem(await client.get("/admin/jobs", headers=OPERATOR), 401)


async def test_a_tenant_admin_lists_the_jobs(client: Any, tenant: Any) -> None:
    r = await client.get("/admin/jobs", headers=tenant.headers("admin"))
    assert r.status_code == 200, r.text
    body = r.json()
    jobs = {j["name"]: j for j in body["items"]}
    assert {"prune_expired", "test_beat"} <= set(jobs)
    beat = jobs["test_beat"]
    assert beat["schedule"] == "every 1s" and beat["scope"] == "deployment"
    assert beat["last_run"] is None and beat["requested_run"] is None
    assert datetime.fromisoformat(beat["next_due_at"]) > datetime.now(UTC) - timedelta(seconds=1)
    assert datetime.fromisoformat(jobs["prune_expired"]["next_due_at"]).minute % 10 == 0
    assert body["leader"] == {"active": False, "since": None, "heartbeat_at": None, "node": None}


async def test_a_tenant_sees_deployment_wide_runs_without_their_details(
    client: Any, tenant: Any, app: Any, settings: Settings
) -> None:
    db = app.state.runtime.db
    run_id = await add_run(db, result={"revoked_tokens": 3})
    leader = Scheduler(db, settings, {})
    await leader.tick()  # a leader is active now
    try:
        mine = (await client.get("/admin/jobs", headers=tenant.headers("admin"))).json()
        ops = (await client.get("/admin/jobs", headers=OPERATOR)).json()
    finally:
        await leader.leadership.resign()
    [seen] = [j["last_run"] for j in mine["items"] if j["name"] == "test_beat"]
    assert seen["run_id"] == run_id and seen["state"] == "failed"
    assert seen["error"].startswith("hidden") and "secret" not in seen["error"]
    assert seen["result"] is None and seen["runner"] is None
    assert mine["leader"]["active"] is True and mine["leader"]["node"] is None
    [full] = [j["last_run"] for j in ops["items"] if j["name"] == "test_beat"]
    assert full["error"] == "RuntimeError: secret detail of some tenant"
    assert full["result"] == {"revoked_tokens": 3} and full["runner"] == "host:1:abc"
    assert ops["leader"]["active"] is True and ops["leader"]["node"] == leader.node


async def test_one_tenant_never_sees_anothers_runs(client: Any, tenant: Any, other_tenant: Any, app: Any) -> None:
    db = app.state.runtime.db
    theirs = await add_run(db, tenant_id=tenant.tenant_id, error="ValueError: acme's own detail")
    system = await add_run(db, scheduled_for=datetime.now(UTC) - timedelta(hours=1))

    async def run_ids(headers: dict[str, str]) -> list[str]:
        r = await client.get("/admin/jobs/test_beat/runs", headers=headers)
        assert r.status_code == 200, r.text
        return [item["run_id"] for item in r.json()["items"]]

    assert await run_ids(tenant.headers("admin")) == [theirs, system]
    assert await run_ids(other_tenant.headers("admin")) == [system]
    assert await run_ids(OPERATOR) == [theirs, system]
    # Its own tenant's run is shown in full to that tenant's admin; to the other it does not exist.
    r = await client.get(f"/admin/jobs/test_beat/runs/{theirs}", headers=tenant.headers("admin"))
    assert r.status_code == 200 and r.json()["error"] == "ValueError: acme's own detail"
    assert r.json()["tenant_id"] == tenant.tenant_id
    problem(await client.get(f"/admin/jobs/test_beat/runs/{theirs}", headers=other_tenant.headers("admin")), 404)
    listing = (await client.get("/admin/jobs", headers=other_tenant.headers("admin"))).json()
    [last] = [j["last_run"] for j in listing["items"] if j["name"] == "test_beat"]
    assert last["run_id"] == system


async def test_runs_are_paged_newest_first(client: Any, tenant: Any, app: Any) -> None:
    db = app.state.runtime.db
    base = datetime(2026, 3, 1, tzinfo=UTC)
    ids = [
        await add_run(db, scheduled_for=base + timedelta(seconds=i), state="succeeded", error=None) for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/admin/jobs/test_beat/runs", params=params, headers=tenant.headers("admin"))
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [item["run_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    r = await client.get("/admin/jobs/test_beat/runs", params={"state": "failed"}, headers=tenant.headers("admin"))
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "cursor", ["not-base64!", "eyIwIjoxfQ", "WzEsMl0", "WyJub3QgYSBkYXRlIiwibm90IGEgdXVpZCJd", "x" * 201]
)
async def test_a_cursor_this_api_did_not_issue_is_refused_naming_it(client: Any, tenant: Any, cursor: str) -> None:
    r = await client.get("/admin/jobs/test_beat/runs", params={"cursor": cursor}, headers=tenant.headers("admin"))
    body = problem(r, 422)
    assert "cursor" in str(body)


async def test_bad_query_values_are_refused_naming_the_field(client: Any, tenant: Any) -> None:
    for params, field in (({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"state": "done"}, "state")):
        body = problem(
            await client.get("/admin/jobs/test_beat/runs", params=params, headers=tenant.headers("admin")), 422
        )
        assert body["errors"][0]["field"] == field


async def test_an_unknown_job_is_404(client: Any, tenant: Any) -> None:
    for method, path in (
        ("GET", "/admin/jobs/nope/runs"),
        ("GET", f"/admin/jobs/nope/runs/{uuid.uuid4()}"),
        ("POST", "/admin/jobs/nope/run"),
    ):
        for headers in (tenant.headers("admin"), OPERATOR):
            body = problem(await client.request(method, path, headers=headers), 404)
            assert "nope" in body["detail"]
    problem(await client.get(f"/admin/jobs/test_beat/runs/{uuid.uuid4()}", headers=OPERATOR), 404)
    problem(await client.get("/admin/jobs/test_beat/runs/not-a-uuid", headers=OPERATOR), 422)


async def test_a_run_of_another_job_is_not_found_under_this_one(client: Any, app: Any) -> None:
    run_id = await add_run(app.state.runtime.db, job="prune_expired")
    problem(await client.get(f"/admin/jobs/test_beat/runs/{run_id}", headers=OPERATOR), 404)
    assert (await client.get(f"/admin/jobs/prune_expired/runs/{run_id}", headers=OPERATOR)).status_code == 200


async def test_running_a_deployment_wide_job_now_needs_the_operator(client: Any, tenant: Any) -> None:
    body = problem(await client.post("/admin/jobs/test_beat/run", headers=tenant.headers("admin")), 403)
    assert "operator" in body["detail"]
    r = await client.post("/admin/jobs/test_beat/run", headers=OPERATOR)
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["state"] == "queued" and run["trigger"] == "manual" and run["requested_by"] == "operator"
    assert r.headers["location"] == run["status_url"] == f"/lily/v1/admin/jobs/test_beat/runs/{run['run_id']}"
    # Asking again while it waits joins the waiting request instead of queueing another.
    again = await client.post("/admin/jobs/test_beat/run", headers=OPERATOR)
    assert again.status_code == 202 and again.json()["run_id"] == run["run_id"]
    listing = (await client.get("/admin/jobs", headers=tenant.headers("admin"))).json()
    [waiting] = [j["requested_run"] for j in listing["items"] if j["name"] == "test_beat"]
    assert waiting["run_id"] == run["run_id"] and waiting["requested_by"] is None  # who asked: operator only


async def test_serve_runs_the_scheduler_in_process_and_it_runs_a_request(settings: Settings, database_url: str) -> None:
    app = create_app(settings, database_url, run_workers=False, run_scheduler=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as client:
            r = await client.post("/admin/jobs/prune_expired/run", headers=OPERATOR)
            assert r.status_code == 202, r.text
            url = r.headers["location"].removeprefix("/lily/v1")

            async def finished() -> dict[str, Any] | None:
                run: dict[str, Any] = (await client.get(url, headers=OPERATOR)).json()
                return run if run["state"] in ("succeeded", "failed") else None

            run = await until(finished, timeout=15, what="the in-process scheduler to run the request")
            assert run["state"] == "succeeded", run
            assert run["result"] == {"revoked_tokens": 0, "idempotency_keys": 0, "job_runs": 0}
            listing = (await client.get("/admin/jobs", headers=OPERATOR)).json()
            assert listing["leader"]["active"] is True
    # The app's shutdown stopped the scheduler and gave up leadership.
    db = Database(database_url, min_size=1, max_size=1)
    await db.open()
    try:
        async with db.connection() as conn:
            assert (await leader_status(conn))["active"] is False
    finally:
        await db.close()


def test_the_routes_document_their_responses(app: Any) -> None:
    paths = app.openapi()["paths"]
    for path, method, ok in (
        ("/lily/v1/admin/jobs", "get", "200"),
        ("/lily/v1/admin/jobs/{name}/runs", "get", "200"),
        ("/lily/v1/admin/jobs/{name}/runs/{run_id}", "get", "200"),
        ("/lily/v1/admin/jobs/{name}/run", "post", "202"),
    ):
        responses = paths[path][method]["responses"]
        assert "$ref" in str(responses[ok]["content"]["application/json"]["schema"]), (path, responses[ok])
        for status in ("401", "403", "422"):
            assert PROBLEM in responses[status]["content"], (path, status)
        if "{name}" in path:
            assert PROBLEM in responses["404"]["content"], path


@pytest.mark.parametrize("name", ["a\x00b", "\U0001f600" * 50, "%00", "..", "prune_expired\n"])
async def test_hostile_job_names_are_not_found_never_500(client: Any, name: str) -> None:
    for method, path in (("GET", "/runs"), ("POST", "/run"), ("GET", f"/runs/{uuid.uuid4()}")):
        r = await client.request(method, f"/admin/jobs/{quote(name, safe='')}{path}", headers=OPERATOR)
        assert r.status_code in (404, 422), (name, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith(PROBLEM)


async def test_an_over_long_job_name_or_a_nul_cursor_is_refused_naming_it(client: Any) -> None:
    body = problem(await client.get(f"/admin/jobs/{'j' * 201}/runs", headers=OPERATOR), 422)
    assert body["errors"][0]["field"] == "name"
    body = problem(await client.get("/admin/jobs/test_beat/runs", params={"cursor": "\x00"}, headers=OPERATOR), 422)
    assert body["errors"][0]["field"] == "cursor"
