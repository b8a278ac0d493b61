"""Requests during a database outage: 503 problem with Retry-After at once, and recovery by themselves."""

from __future__ import annotations

import time
from typing import Any

from tests.api.helpers import assert_problem
from tests.pipeline.support import until

from .conftest import database_outage


async def test_requests_fail_fast_with_503_and_recover_without_a_restart(
    client: Any, tenant: Any, pg_admin_url: str, database_url: str
) -> None:
    editor = tenant.headers("editor")
    r = await client.post("/metadata", json={"qualified_name": "pg://db/s.before", "type": "table"}, headers=editor)
    assert r.status_code == 201, r.text
    with database_outage(pg_admin_url, database_url):
        timings = []
        for i in range(5):
            began = time.monotonic()
            r = await client.post(
                "/metadata", json={"qualified_name": f"pg://db/s.during{i}", "type": "table"}, headers=editor
            )
            timings.append(time.monotonic() - began)
            problem = assert_problem(r, 503, "service-unavailable")
            assert int(r.headers["Retry-After"]) >= 1
            assert "database" in problem["detail"]
        r = await client.get("/metadata/search", headers=tenant.headers("viewer"))
        assert_problem(r, 503, "service-unavailable")
        assert max(timings) < 1.0, timings

    # The database is back: the breaker closes by itself, and the in-process worker applies again
    # (a 201 means the pipeline applied the write within the wait).
    async def write_applies() -> Any:
        r = await client.post("/metadata", json={"qualified_name": "pg://db/s.after", "type": "table"}, headers=editor)
        return r if r.status_code == 201 else None

    r = await until(write_applies, timeout=15, interval=0.2, what="writes to succeed again")
    assert r.json()["version"] == 1
    # Nothing written during the outage exists; what was written before is still there.
    listed = (await client.get("/metadata/search", headers=tenant.headers("viewer"))).json()
    names = {a["qualified_name"] for a in listed["items"]}
    assert names == {"pg://db/s.before", "pg://db/s.after"}


async def test_a_worker_resumes_by_itself_after_an_outage(
    app: Any, client: Any, tenant: Any, pg_admin_url: str, database_url: str
) -> None:
    editor = tenant.headers("editor", Prefer="respond-async")
    with database_outage(pg_admin_url, database_url):
        r = await client.post("/metadata", json={"qualified_name": "pg://db/s.x", "type": "table"}, headers=editor)
        assert_problem(r, 503)

    async def accepted() -> Any:
        r = await client.post("/metadata", json={"qualified_name": "pg://db/s.y", "type": "table"}, headers=editor)
        return r if r.status_code == 202 else None

    event_id = (await until(accepted, timeout=15, interval=0.2, what="writes to be accepted")).json()["event_id"]

    async def applied() -> bool:
        r = await client.get(f"/events/{event_id}", headers=tenant.headers("viewer"))
        return r.status_code == 200 and r.json()["state"] == "applied"

    await until(applied, timeout=15, what="the worker to apply the event")
    assert all(not task.done() for task in app.state.runtime.background)
