"""``/system/health``: public up/down only, fast even when the database is gone; details for operators."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from lily.domain.errors import ServiceUnavailable
from lily.store.db import Database
from tests.api.helpers import assert_problem
from tests.pipeline.support import until

from .conftest import OPERATOR_TOKEN, database_outage, operator_headers


async def test_public_health_says_up_and_nothing_else(client: Any, tenant: Any) -> None:
    # Some state worth hiding: a tenant with a write in the log.
    r = await client.post(
        "/metadata", json={"qualified_name": "pg://db/s.t", "type": "table"}, headers=tenant.headers("editor")
    )
    assert r.status_code == 201, r.text
    r = await client.get("/system/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    # A tenant's credential changes nothing: the public probe never shows deployment figures.
    r = await client.get("/system/health", headers=tenant.headers("admin"))
    assert r.json() == {"status": "ok"}


async def test_public_health_answers_503_within_a_second_when_the_database_is_unreachable(
    client: Any, pg_admin_url: str, database_url: str
) -> None:
    with database_outage(pg_admin_url, database_url):
        for _ in range(3):  # the first finds the broken connections, the next ones the open breaker
            began = time.monotonic()
            r = await client.get("/system/health")
            elapsed = time.monotonic() - began
            assert r.status_code == 503, r.text
            assert r.json() == {"status": "unavailable"}
            assert int(r.headers["Retry-After"]) >= 1
            assert elapsed < 1.0, elapsed

    # Back again without any restart.
    async def healthy() -> bool:
        return (await client.get("/system/health")).status_code == 200

    await until(healthy, timeout=10, what="health to recover")


async def test_health_of_a_server_that_was_never_there_is_503_fast() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = Database(f"postgresql://lily@127.0.0.1:{port}/lily", min_size=1, max_size=2, timeout=0.5)
    await db.pool.open(wait=False)
    try:
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await db.ping()
        assert time.monotonic() - began < 1.5
        await until(lambda: _is_open(db), timeout=5, what="the breaker to open")
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            async with db.connection():
                pass
        assert time.monotonic() - began < 0.05  # the open breaker answers without touching the pool
        assert caught.value.extra["retry_after_seconds"] >= 1
        assert db.breaker.last_error is not None and str(port) not in db.breaker.last_error
    finally:
        await db.close()


async def _is_open(db: Database) -> bool:
    return db.breaker.is_open


async def test_detailed_health_needs_the_operator_token(client: Any, tenant: Any) -> None:
    url = "/system/health/details"
    assert_problem(await client.get(url), 401)
    assert_problem(await client.get(url, headers={"Authorization": "Bearer not-the-token"}), 401)
    assert_problem(await client.get(url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}x"}), 401)
    assert_problem(await client.get(url, headers=tenant.headers("admin")), 401)
    r = await client.get(url, headers=operator_headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["database"]["up"] is True and body["database"]["outages"] == 0
    assert body["schema_version"] >= 1
    assert {"lag", "dead_letters", "accept_to_apply", "partitions"} <= body["pipeline"].keys()
    assert body["process"]["background_tasks"] >= 1  # the pipeline worker of this app
    assert OPERATOR_TOKEN not in r.text


async def test_detailed_health_reports_an_outage_and_its_end(client: Any, pg_admin_url: str, database_url: str) -> None:
    with database_outage(pg_admin_url, database_url):
        await client.get("/system/health")  # trips the breaker
        began = time.monotonic()
        r = await client.get("/system/health/details", headers=operator_headers())
        assert time.monotonic() - began < 1.0
        assert r.status_code == 503 and r.headers["Retry-After"]
        body = r.json()
        assert body["status"] == "unavailable" and body["database"]["up"] is False
        assert body["database"]["down_for_seconds"] >= 0 and body["pipeline"] is None

    async def recovered() -> dict[str, Any] | None:
        r = await client.get("/system/health/details", headers=operator_headers())
        return r.json() if r.status_code == 200 else None

    body = await until(recovered, timeout=10, what="details to report the database back")
    assert body["database"]["outages"] == 1 and body["database"]["last_outage_seconds"] > 0


async def test_detailed_health_is_closed_without_a_configured_operator_token(app: Any, client: Any) -> None:
    runtime = app.state.runtime
    runtime.settings = runtime.settings.model_copy(update={"operator_token": None})
    problem = assert_problem(await client.get("/system/health/details", headers=operator_headers()), 403)
    assert "LILY_OPERATOR_TOKEN" in problem["detail"]
