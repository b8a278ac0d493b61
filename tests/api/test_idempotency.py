"""``Idempotency-Key``: a retried write answers what the first one did and applies nothing again."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from .helpers import assert_problem

ASSET = {"qualified_name": "pg://db/s.idem", "type": "table", "description": "first"}


async def counts(database_url: str, tenant_id: str) -> tuple[int, int]:
    """(events, asset versions) of a tenant."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM events WHERE tenant_id = %s),"
            " (SELECT count(*) FROM asset_versions WHERE tenant_id = %s)",
            [tenant_id, tenant_id],
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


async def test_same_key_same_body_answers_the_same_and_applies_once(client: Any, tenant: Any, database_url: str):
    headers = tenant.headers("editor", **{"Idempotency-Key": "k-1"})
    first = await client.post("/metadata", json=ASSET, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/metadata", json=ASSET, headers=headers)
    assert again.status_code == 201  # the first answer, not "200, unchanged"
    assert again.json() == first.json() and again.headers["etag"] == first.headers["etag"]
    assert await counts(database_url, tenant.tenant_id) == (1, 1)
    r = await client.get(f"/metadata/{first.json()['asset_id']}", headers=tenant.headers("viewer"))
    assert [v["version"] for v in r.json()["history"]["items"]] == [1]


async def test_same_key_other_body_is_409(client: Any, tenant: Any, database_url: str):
    headers = tenant.headers("editor", **{"Idempotency-Key": "k-2"})
    assert (await client.post("/metadata", json=ASSET, headers=headers)).status_code == 201
    problem = assert_problem(
        await client.post("/metadata", json={**ASSET, "description": "other"}, headers=headers), 409, "conflict"
    )
    assert problem["idempotency_key"] == "k-2"
    assert await counts(database_url, tenant.tenant_id) == (1, 1)


async def test_keys_are_per_tenant(client: Any, tenant: Any, other_tenant: Any, database_url: str):
    key = {"Idempotency-Key": "shared-key"}
    mine = await client.post("/metadata", json=ASSET, headers=tenant.headers("editor", **key))
    theirs = await client.post(
        "/metadata", json={**ASSET, "description": "theirs"}, headers=other_tenant.headers("editor", **key)
    )
    assert mine.status_code == theirs.status_code == 201
    assert theirs.json()["description"] == "theirs"
    assert await counts(database_url, tenant.tenant_id) == (1, 1)
    assert await counts(database_url, other_tenant.tenant_id) == (1, 1)


async def test_with_respond_async_a_retry_gets_the_same_event(client: Any, tenant: Any, database_url: str):
    headers = tenant.headers("editor", **{"Idempotency-Key": "k-async", "Prefer": "respond-async"})
    first = await client.post("/metadata", json=ASSET, headers=headers)
    again = await client.post("/metadata", json=ASSET, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["event_id"] == first.json()["event_id"]
    assert again.headers["location"] == first.headers["location"]
    # Waiting for it now answers with the version it produced, still once.
    waited = await client.post(
        "/metadata", json=ASSET, headers=tenant.headers("editor", **{"Idempotency-Key": "k-async"})
    )
    assert waited.status_code == 201 and waited.json()["version"] == 1
    assert await counts(database_url, tenant.tenant_id) == (1, 1)


async def test_a_repeated_failed_write_repeats_its_failure(client: Any, tenant: Any):
    created = await client.post("/metadata", json=ASSET, headers=tenant.headers("editor"))
    asset_id = created.json()["asset_id"]
    stale = f'"{asset_id}:7"'
    headers = tenant.headers("editor", **{"Idempotency-Key": "k-put", "If-Match": stale})
    body = {"type": "table", "description": "x"}
    first = await client.put(f"/metadata/{asset_id}", json=body, headers=headers)
    again = await client.put(f"/metadata/{asset_id}", json=body, headers=headers)
    assert first.status_code == again.status_code == 412


async def test_concurrent_repeats_of_one_key_apply_once(client: Any, tenant: Any, database_url: str):
    headers = tenant.headers("editor", **{"Idempotency-Key": "k-race"})
    answers = await asyncio.gather(*(client.post("/metadata", json=ASSET, headers=headers) for _ in range(5)))
    assert {r.status_code for r in answers} == {201}
    assert len({r.headers["etag"] for r in answers}) == 1
    assert await counts(database_url, tenant.tenant_id) == (1, 1)
