"""``Prefer: respond-async`` and ``GET /events/{id}``: an event's state from accepted to its outcome."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from lily.domain.events import partition_of
from tests.pipeline.support import hold_partition, settled, until

from .helpers import assert_problem

ASYNC = {"Prefer": "respond-async"}
ROOT = "http://lily.test"  # status URLs are absolute paths; the client's base_url already has /lily/v1


async def create(client: Any, tenant: Any, name: str) -> dict[str, Any]:
    r = await client.post("/metadata", json={"qualified_name": name, "type": "table"}, headers=tenant.headers("editor"))
    assert r.status_code == 201, r.text
    return {**r.json(), "etag": r.headers["etag"]}


async def head_seq(database_url: str, partition: int) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT next_seq - 1 FROM log_heads WHERE partition = %s", [partition])
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_respond_async_answers_202_and_the_event_reaches_applied(client, tenant):
    r = await client.post(
        "/metadata",
        json={"qualified_name": "pg://db/s.async", "type": "table"},
        headers=tenant.headers("editor", **ASYNC),
    )
    assert r.status_code == 202, r.text
    body = r.json()
    event_id = body["event_id"]
    assert uuid.UUID(event_id) and body["status"] == "accepted"
    assert body["status_url"] == f"/lily/v1/events/{event_id}" == r.headers["location"]
    assert r.headers["preference-applied"] == "respond-async"

    async def applied() -> dict[str, Any] | None:
        state = (await client.get(ROOT + body["status_url"], headers=tenant.headers("viewer"))).json()
        return state if state["state"] == "applied" else None

    state = await until(applied, what="the event to be applied")
    assert state["event_id"] == event_id and state["kind"] == "asset.upsert"
    assert state["subject"] == "pg://db/s.async" and state["error"] is None and state["attempts"] == 1
    assert state["result"]["version"] == 1 and state["result"]["created"] is True
    assert state["accept_to_apply_seconds"] >= 0 and state["applied_at"] >= state["accepted_at"]
    asset = await client.get(f"/metadata/{state['result']['asset_id']}", headers=tenant.headers("viewer"))
    assert asset.status_code == 200 and asset.json()["version"] == 1


async def test_racing_puts_on_one_version_one_applies_one_fails(client, tenant, database_url, settings):
    asset = await create(client, tenant, "pg://db/s.race")
    partition = partition_of(tenant.tenant_id, "pg://db/s.race", settings.partitions)
    headers = tenant.headers("editor", **ASYNC, **{"If-Match": asset["etag"]})
    # Both pass the API's early ETag check (the asset is at version 1 for both); the pipeline,
    # applying them in log order, lets the first win and refuses the second.
    async with hold_partition(database_url, partition):
        ids = []
        for description in ("first", "second"):
            r = await client.put(
                f"/metadata/{asset['asset_id']}", json={"type": "table", "description": description}, headers=headers
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["event_id"])
    first, second = [await settled(client, tenant.headers("viewer"), i) for i in ids]
    assert first["state"] == "applied" and first["result"]["version"] == 2
    assert second["state"] == "failed"
    assert "version 2" in second["error"]
    assert second["result"]["status"] == 412 and second["result"]["current_version"] == 2
    current = (await client.get(f"/metadata/{asset['asset_id']}", headers=tenant.headers("viewer"))).json()
    assert current["version"] == 2 and current["description"] == "first"


async def test_a_waiting_write_that_loses_the_race_answers_412(client, tenant, database_url, settings):
    asset = await create(client, tenant, "pg://db/s.race_sync")
    partition = partition_of(tenant.tenant_id, "pg://db/s.race_sync", settings.partitions)
    headers = tenant.headers("editor", **{"If-Match": asset["etag"]})
    before = await head_seq(database_url, partition)
    async with hold_partition(database_url, partition):
        puts = [
            asyncio.create_task(
                client.put(f"/metadata/{asset['asset_id']}", json={"type": "table", "description": d}, headers=headers)
            )
            for d in ("a", "b")
        ]

        async def both_accepted() -> bool:
            return await head_seq(database_url, partition) == before + 2

        await until(both_accepted, what="both writes to be in the log")
    responses = await asyncio.gather(*puts)
    assert sorted(r.status_code for r in responses) == [200, 412]
    won, lost = sorted(responses, key=lambda r: r.status_code)
    assert won.json()["version"] == 2
    assert_problem(lost, 412, "precondition-failed")


async def test_unknown_and_other_tenants_events_are_404(client, tenant, other_tenant):
    assert_problem(await client.get(f"/events/{uuid.uuid4()}", headers=tenant.headers("viewer")), 404)
    r = await client.post(
        "/metadata",
        json={"qualified_name": "pg://db/s.mine", "type": "table"},
        headers=tenant.headers("editor", **ASYNC),
    )
    event_id = r.json()["event_id"]
    assert (await client.get(f"/events/{event_id}", headers=tenant.headers("viewer"))).status_code == 200
    assert_problem(await client.get(f"/events/{event_id}", headers=other_tenant.headers("admin")), 404)
    assert_problem(await client.get(f"/events/{event_id}"), 401)


async def test_prefer_is_parsed_per_rfc_7240(client, tenant):
    r = await client.post(
        "/metadata",
        json={"qualified_name": "pg://db/s.prefer", "type": "table"},
        headers=tenant.headers("editor", Prefer="return=minimal, respond-async; x=1"),
    )
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"


async def test_a_wait_that_runs_out_answers_202_and_the_write_still_applies(client, tenant, database_url, settings):
    name = "pg://db/s.slow"
    async with hold_partition(database_url, partition_of(tenant.tenant_id, name, settings.partitions)):
        # wait=0 shortens the configured bound; the held partition guarantees the wait runs out.
        r = await client.post(
            "/metadata",
            json={"qualified_name": name, "type": "table"},
            headers=tenant.headers("editor", Prefer="wait=0"),
        )
        assert r.status_code == 202, r.text
        assert "preference-applied" not in r.headers  # the client did not ask for async
    state = await settled(client, tenant.headers("viewer"), r.json()["event_id"])
    assert state["state"] == "applied"
