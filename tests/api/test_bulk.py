"""Bulk ingestion: streamed JSON arrays and NDJSON, per-item failures, limits, status and isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from lily.config import Settings
from tests.api.helpers import assert_problem, fingerprint

NDJSON = {"Content-Type": "application/x-ndjson"}
BODY_LIMIT = 32 * 1024
ITEM_LIMIT = 100


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small limits, so the limit tests stay fast; every other test here stays well under them."""
    return settings.model_copy(update={"max_bulk_body_bytes": BODY_LIMIT, "max_bulk_items": ITEM_LIMIT})


def asset(i: int, **extra: Any) -> dict[str, Any]:
    return {"qualified_name": f"pg://db/s.table_{i}", "type": "table", **extra}


async def finished(client: Any, tenant: Any, job_id: str) -> dict[str, Any]:
    """The job's status once every item is decided (the status endpoint long-polls with ``wait``)."""
    r = await client.get(f"/metadata/bulk/status/{job_id}", params={"wait": 20}, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["state"] not in ("queued", "running"), body
    return body


async def names(db: Any, tenant_id: str) -> set[str]:
    async with db.tenant(tenant_id) as conn:
        cur = await conn.execute("SELECT qualified_name FROM assets")
        return {row["qualified_name"] for row in await cur.fetchall()}


async def test_json_array_mixed_valid_and_invalid(client: Any, tenant: Any, db: Any) -> None:
    items = [
        asset(0),
        {"type": "table"},
        asset(2, tags=["pii"]),
        asset(3, type="Not A Type!"),
        42,
        asset(5),
        asset(6, attributes={"note": "nul \u0000 inside"}),
    ]
    r = await client.post("/metadata/bulk", content=orjson.dumps(items), headers=tenant.headers("editor"))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["total"] == 7 and job["rejected"] == 4
    assert r.headers["location"] == job["status_url"]
    status = await finished(client, tenant, job["job_id"])
    assert status["state"] == "partial"
    assert (status["total"], status["applied"], status["failed"], status["pending"]) == (7, 3, 4, 0)
    errors = {e["index"]: e["error"] for e in status["errors"]}
    assert sorted(errors) == [1, 3, 4, 6]
    assert "qualified_name" in errors[1] and "Field required" in errors[1]
    assert errors[3].startswith("type:")
    assert "dictionary" in errors[4]
    assert errors[6].startswith("attributes:") and "U+0000" in errors[6]
    assert await names(db, tenant.tenant_id) == {f"pg://db/s.table_{i}" for i in (0, 2, 5)}
    # The applied items went through the same pipeline as single writes: versions and audit exist.
    r = await client.get("/metadata/search", params={"tag": "pii"}, headers=tenant.headers("viewer"))
    (tagged,) = r.json()["items"]
    assert tagged["qualified_name"] == "pg://db/s.table_2" and tagged["version"] == 1


async def test_ndjson_streamed_with_malformed_line(client: Any, tenant: Any, db: Any) -> None:
    lines = [
        orjson.dumps(asset(0)),
        b'{"qualified_name": "pg://db/s.broken", ',
        orjson.dumps(asset(2)),
        b"",
        orjson.dumps(asset(3, owners=[""])),
    ]

    async def body() -> AsyncIterator[bytes]:
        # Chunks split mid-line: the parser must reassemble lines across chunk boundaries.
        data = b"\n".join(lines) + b"\n"
        for i in range(0, len(data), 7):
            yield data[i : i + 7]

    r = await client.post("/metadata/bulk", content=body(), headers=tenant.headers("editor", **NDJSON))
    assert r.status_code == 202, r.text
    status = await finished(client, tenant, r.json()["job_id"])
    # The blank line is not an item: indexes count items, not lines.
    assert (status["total"], status["applied"], status["failed"]) == (4, 2, 2)
    errors = {e["index"]: e["error"] for e in status["errors"]}
    assert sorted(errors) == [1, 3]
    assert errors[1].startswith("malformed JSON")
    assert errors[3].startswith("owners[0]:")
    assert await names(db, tenant.tenant_id) == {"pg://db/s.table_0", "pg://db/s.table_2"}


async def test_repeated_names_apply_in_item_order(client: Any, tenant: Any, db: Any) -> None:
    items = [asset(i % 3, description=f"v{i}") for i in range(9)]
    r = await client.post("/metadata/bulk", content=orjson.dumps(items), headers=tenant.headers("editor"))
    status = await finished(client, tenant, r.json()["job_id"])
    assert status["state"] == "succeeded" and status["applied"] == 9
    async with db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT qualified_name, version, description FROM assets ORDER BY 1")
        rows = await cur.fetchall()
    assert [(r["version"], r["description"]) for r in rows] == [(3, "v6"), (3, "v7"), (3, "v8")]


async def test_body_over_limit_applies_nothing(client: Any, tenant: Any, db: Any) -> None:
    before = await fingerprint(db, tenant.tenant_id)

    async def body() -> AsyncIterator[bytes]:
        # No Content-Length: the limit must hold while streaming, after many items were staged.
        for i in range(50):
            yield orjson.dumps(asset(i, description="x" * 2000)) + b"\n"

    r = await client.post("/metadata/bulk", content=body(), headers=tenant.headers("editor", **NDJSON))
    assert "bytes" in assert_problem(r, 413, "payload-too-large")["detail"]
    assert await fingerprint(db, tenant.tenant_id) == before
    async with db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM bulk_jobs")
        assert (await cur.fetchone())["n"] == 0


async def test_declared_length_over_limit_is_refused_at_once(client: Any, tenant: Any) -> None:
    r = await client.post("/metadata/bulk", content=b"[" + b" " * BODY_LIMIT + b"]", headers=tenant.headers("editor"))
    assert_problem(r, 413, "payload-too-large")


async def test_too_many_items_applies_nothing(client: Any, tenant: Any, db: Any) -> None:
    before = await fingerprint(db, tenant.tenant_id)
    r = await client.post(
        "/metadata/bulk",
        content=orjson.dumps([asset(i) for i in range(ITEM_LIMIT + 1)]),
        headers=tenant.headers("editor"),
    )
    assert "items" in assert_problem(r, 413, "payload-too-large")["detail"]
    assert await fingerprint(db, tenant.tenant_id) == before


@pytest.mark.parametrize(
    ("content", "headers", "expected"),
    [
        (b"", NDJSON, 202),  # NDJSON with no lines: an empty job
        (b"[]", {}, 202),  # an empty array: an empty job
        (b"", {}, 400),  # not a JSON array at all
        (b'{"qualified_name": "x", "type": "table"}', {}, 400),
        (b'[{"qualified_name": "pg://a", "type": "table"}, {"qualified', {}, 400),
    ],
)
async def test_empty_and_unparseable_bodies(
    client: Any, tenant: Any, db: Any, content: bytes, headers: dict[str, str], expected: int
) -> None:
    before = await fingerprint(db, tenant.tenant_id)
    r = await client.post("/metadata/bulk", content=content, headers=tenant.headers("editor", **headers))
    if expected == 400:
        assert_problem(r, 400, "malformed-json")
        assert await fingerprint(db, tenant.tenant_id) == before
        return
    assert r.status_code == 202, r.text
    status = await finished(client, tenant, r.json()["job_id"])
    assert (status["state"], status["total"], status["applied"], status["failed"]) == ("succeeded", 0, 0, 0)


async def test_roles_and_isolation(client: Any, tenant: Any, other_tenant: Any) -> None:
    body = orjson.dumps([asset(1)])
    r = await client.post("/metadata/bulk", content=body, headers=tenant.headers("viewer"))
    assert_problem(r, 403, "forbidden")
    r = await client.post("/metadata/bulk", content=body)
    assert_problem(r, 401)
    r = await client.post("/metadata/bulk", content=body, headers=tenant.headers("editor"))
    job_id = r.json()["job_id"]
    await finished(client, tenant, job_id)
    r = await client.get(f"/metadata/bulk/status/{job_id}", headers=other_tenant.headers("admin"))
    assert_problem(r, 404, "not-found")
    r = await client.get(f"/metadata/bulk/status/{job_id}", params={"wait": 1}, headers=other_tenant.headers())
    assert_problem(r, 404, "not-found")


async def test_idempotency_key(client: Any, tenant: Any, db: Any) -> None:
    body = orjson.dumps([asset(1), asset(2)])
    headers = tenant.headers("editor", **{"Idempotency-Key": "load-42"})
    first = await client.post("/metadata/bulk", content=body, headers=headers)
    await finished(client, tenant, first.json()["job_id"])
    again = await client.post("/metadata/bulk", content=body, headers=headers)
    assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["replayed"] is True
    async with db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM events")
        assert (await cur.fetchone())["n"] == 2
    other = await client.post("/metadata/bulk", content=orjson.dumps([asset(3)]), headers=headers)
    assert_problem(other, 409, "conflict")


async def test_concurrent_uploads_beyond_the_cap_are_told_to_retry(client, tenant, db):
    """A bulk upload holds a connection until its body ends; past its share, a tenant gets 429, not a hang."""
    import asyncio

    from lily.store import bulk as store_bulk

    release = asyncio.Event()

    async def slow_body():
        yield b'{"qualified_name": "pg://slow/a", "type": "table"}\n'
        await release.wait()
        yield b'{"qualified_name": "pg://slow/b", "type": "table"}\n'

    async def held() -> int:
        async with db.tenant(tenant.tenant_id) as conn:
            return await store_bulk.slots_held(conn)

    headers = tenant.headers("editor", **{"Content-Type": "application/x-ndjson"})
    first = asyncio.create_task(client.post("/metadata/bulk", content=slow_body(), headers=headers))
    for _ in range(500):  # bounded: until the first upload holds a slot (of the default 4, 2 per tenant)
        if await held() == 1:
            break
        await asyncio.sleep(0.01)
    assert await held() == 1
    second = asyncio.create_task(client.post("/metadata/bulk", content=slow_body(), headers=headers))
    for _ in range(500):
        if await held() == 2:
            break
        await asyncio.sleep(0.01)
    third = await client.post(
        "/metadata/bulk", content=b'{"qualified_name": "pg://x", "type": "table"}\n', headers=headers
    )
    body = assert_problem(third, 429)
    assert third.headers["Retry-After"] == "1" and body["retry_after_seconds"] == 1
    release.set()
    for done in await asyncio.gather(first, second):
        assert done.status_code == 202, done.text
        assert done.json()["total"] == 2
    assert await held() == 0  # freed with the transactions
