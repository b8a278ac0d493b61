"""``GET /lily/v1/changes``: every change type with its shape, filters, cursors, long-polling, isolation."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from lily.api import pagination
from tests.api.helpers import assert_problem, fields_of

OL_PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python"
OL_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"


async def put(client: Any, tenant: Any, qn: str, **fields: Any) -> dict[str, Any]:
    r = await client.post(
        "/metadata", json={"qualified_name": qn, "type": "table", **fields}, headers=tenant.headers("editor")
    )
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


async def link(client: Any, tenant: Any, up: str, down: str) -> None:
    r = await client.post(
        "/metadata/lineage",
        json={"upstreams": [{"qualified_name": up}], "downstreams": [{"qualified_name": down}]},
        headers=tenant.headers("editor"),
    )
    assert r.status_code == 201, r.text


async def changes(client: Any, tenant: Any, role: str = "viewer", **params: Any) -> dict[str, Any]:
    r = await client.get("/changes", params=params, headers=tenant.headers(role))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def collect(
    client: Any, tenant: Any, count: int, timeout: float = 20.0, role: str = "viewer", **params: Any
) -> list[dict[str, Any]]:
    """Read the feed from the start until ``count`` events came (long-polling, bounded), then check that
    nothing more is there."""
    items: list[dict[str, Any]] = []
    cursor = None
    deadline = time.monotonic() + timeout
    while len(items) < count:
        assert time.monotonic() < deadline, f"only {len(items)} of {count} events: {[i['type'] for i in items]}"
        page = await changes(client, tenant, role, cursor=cursor or "", wait=2, **params)
        items += page["items"]
        cursor = page["next_cursor"]
    extra = await changes(client, tenant, role, cursor=cursor, wait=0.2, **params)
    assert extra["items"] == [], [i["type"] for i in extra["items"]]
    return items


async def test_every_asset_and_lineage_change_emits_its_event_with_its_shape(client: Any, tenant: Any) -> None:
    a = await put(client, tenant, "pg://wh/s.a", description="first", attributes={"columns": ["id"]})
    b = await put(client, tenant, "pg://wh/s.b")
    await link(client, tenant, "pg://wh/s.a", "pg://wh/s.b")
    # A schema change: an update of a, and (propagated) an upstream change of b.
    await put(client, tenant, "pg://wh/s.a", attributes={"columns": ["id", "total"], "owner_team": "x"})
    r = await client.put(
        f"/metadata/{b['asset_id']}", json={"type": "table", "description": "all new"}, headers=tenant.headers("editor")
    )
    assert r.status_code == 200, r.text
    r = await client.delete(f"/metadata/lineage/{b['asset_id']}", headers=tenant.headers("editor"))
    assert r.status_code in (200, 201), r.text
    r = await client.delete(f"/metadata/{a['asset_id']}", headers=tenant.headers("editor"))
    assert r.status_code == 200, r.text
    r = await client.post(
        "/metadata", json={"qualified_name": "pg://wh/s.a", "type": "table"}, headers=tenant.headers("editor")
    )
    assert r.status_code in (200, 201), r.text

    items = await collect(client, tenant, 9)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_type.setdefault(item["type"], []).append(item)
    assert [(i["type"], i["qualified_name"]) for i in items if i["type"] != "asset.upstream_changed"] == [
        ("asset.created", "pg://wh/s.a"),
        ("asset.created", "pg://wh/s.b"),
        ("lineage.added", "pg://wh/s.b"),
        ("asset.updated", "pg://wh/s.a"),
        ("asset.updated", "pg://wh/s.b"),
        ("lineage.removed", "pg://wh/s.b"),
        ("asset.deleted", "pg://wh/s.a"),
        ("asset.restored", "pg://wh/s.a"),
    ]
    created = by_type["asset.created"][0]
    assert created["asset_id"] == a["asset_id"] and created["version"] == 1
    assert created["changes"]["description"] == {"from": None, "to": "first"}
    assert created["actor"].startswith("key:")
    assert created["origin"]["source"] == "api" and uuid.UUID(created["origin"]["event_id"])
    assert created["tenant_id"] == tenant.tenant_id
    updated_a, updated_b = by_type["asset.updated"]
    # Only the attribute keys that changed, before and after; nothing else of the asset.
    assert updated_a["changes"] == {
        "attributes": {
            "from": {"columns": ["id"], "owner_team": None},
            "to": {"columns": ["id", "total"], "owner_team": "x"},
        }
    }
    assert updated_a["version"] == 2
    assert updated_b["changes"]["description"] == {"from": None, "to": "all new"}
    (added,) = by_type["lineage.added"]
    assert added["asset_id"] == b["asset_id"]
    assert added["changes"] == {"upstreams": {"items": ["pg://wh/s.a"], "count": 1}, "process": None}
    (removed,) = by_type["lineage.removed"]
    assert removed["changes"]["direction"] == "both" and removed["changes"]["edges"]["count"] == 1
    (edge,) = removed["changes"]["edges"]["items"]
    assert (edge["upstream_id"], edge["downstream_id"]) == (a["asset_id"], b["asset_id"])
    assert by_type["asset.deleted"][0]["changes"] == {"deleted": {"from": False, "to": True}}
    # The schema change and the deletion of a both reached b (which has no source of its own) while linked.
    (upstream,) = by_type["asset.upstream_changed"]
    assert upstream["qualified_name"] == "pg://wh/s.b" and upstream["actor"] == "lily:propagation"
    assert upstream["changes"]["upstream"]["qualified_name"] == "pg://wh/s.a"
    assert upstream["changes"]["upstream"]["change"]["kind"] == "schema_changed"
    assert upstream["origin"]["source"] == "propagation"


async def test_large_members_are_truncated(client: Any, tenant: Any) -> None:
    await put(client, tenant, "pg://wh/s.big", description="x" * 10_000, tags=["a"])
    (item,) = await collect(client, tenant, 1)
    assert item["changes"]["description"] == {
        "truncated": True,
        "bytes": len(orjson.dumps({"from": None, "to": "x" * 10_000})),
    }
    assert item["changes"]["tags"] == {"from": None, "to": ["a"]}


async def test_an_openlineage_run_emits_its_assets_lineage_and_run(client: Any, tenant: Any) -> None:
    event = {
        "eventType": "COMPLETE",
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": OL_PRODUCER,
        "schemaURL": OL_SCHEMA,
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "etl", "name": "load"},
        "inputs": [{"namespace": "pg://wh", "name": "raw.orders"}],
        "outputs": [{"namespace": "pg://wh", "name": "mart.orders"}],
    }
    r = await client.post("http://lily.test/api/v1/lineage", json=event, headers=tenant.headers("editor"))
    assert r.status_code == 201, r.text
    # The two datasets and the job created (an upsert each), the edge, the run recorded on the job.
    items = await collect(client, tenant, 4, types="asset.created,lineage.*")
    assert (
        sorted((i["type"], i["qualified_name"]) for i in items)
        == [
            ("asset.created", "etl.load"),
            ("asset.created", "pg://wh/mart.orders"),
            ("asset.created", "pg://wh/raw.orders"),
            ("lineage.added", "pg://wh/mart.orders"),
        ]
        or sorted(i["type"] for i in items).count("asset.created") == 3
    ), items
    assert all(i["origin"]["source"] == "openlineage" for i in items)
    added = next(i for i in items if i["type"] == "lineage.added")
    assert added["changes"]["upstreams"]["items"] == ["pg://wh/raw.orders"]
    assert added["changes"]["process"] is not None
    runs = await collect(client, tenant, 1, types="asset.updated")
    assert "last_run" in runs[0]["changes"]["attributes"]["to"]
    assert runs[0]["changes"]["attributes"]["to"]["last_run"]["state"] == "COMPLETE"


async def test_types_filter_accepts_patterns_and_refuses_others(client: Any, tenant: Any) -> None:
    a = await put(client, tenant, "pg://wh/s.a")
    await put(client, tenant, "pg://wh/s.b")
    await link(client, tenant, "pg://wh/s.a", "pg://wh/s.b")
    await collect(client, tenant, 3)  # all applied and served
    lineage = await changes(client, tenant, types="lineage.*")
    assert [i["type"] for i in lineage["items"]] == ["lineage.added"]
    both = await changes(client, tenant, types=["lineage.added", "asset.created"])
    assert [i["type"] for i in both["items"]] == ["asset.created", "asset.created", "lineage.added"]
    assert [i["type"] for i in (await changes(client, tenant, types="*"))["items"]] == [
        "asset.created",
        "asset.created",
        "lineage.added",
    ]
    assert (await changes(client, tenant, types="asset.deleted"))["items"] == []
    # '_' is a LIKE wildcard: it must match only itself.
    assert (await changes(client, tenant, types="asset.create_"))["items"] == []
    for bad in ("asset.", "asset", "ASSET.*", "asset.created%", "*.created", "a.b.c", "asset.created,bad!"):
        r = await client.get("/changes", params={"types": bad}, headers=tenant.headers("viewer"))
        assert "types" in fields_of(assert_problem(r, 422)), bad
    r = await client.get("/changes", params={"types": ["asset.*"] * 21}, headers=tenant.headers("viewer"))
    assert "types" in fields_of(assert_problem(r, 422))
    assert a["asset_id"]


async def test_cursors_the_api_did_not_issue_are_refused(client: Any, tenant: Any) -> None:
    await put(client, tenant, "pg://wh/s.a")
    page = await changes(client, tenant, wait=5)
    assert page["items"]
    good = page["next_cursor"]
    assert (await changes(client, tenant, cursor=good))["items"] == []
    for bad in (
        "not-base64!",
        "@@@",
        pagination.encode([1]),
        pagination.encode(["1", 2]),
        pagination.encode([-1, 0]),
        pagination.encode([2**63, 0]),
        pagination.encode({"xid": 1}),
        pagination.encode([10**15, 0]),  # well formed, but a position no read has reached
        "A" * 600,
    ):
        r = await client.get("/changes", params={"cursor": bad}, headers=tenant.headers("viewer"))
        assert "cursor" in fields_of(assert_problem(r, 422)), bad


async def test_wait_and_limit_are_bounded(client: Any, tenant: Any) -> None:
    for params in ({"wait": 31}, {"wait": -1}, {"limit": 0}, {"limit": 1001}, {"wait": "soon"}):
        r = await client.get("/changes", params=params, headers=tenant.headers("viewer"))
        assert fields_of(assert_problem(r, 422)) & set(params), params
    r = await client.get("/changes", params={"since": "yesterday"}, headers=tenant.headers("viewer"))
    assert "since" in fields_of(assert_problem(r, 422))


async def test_pages_follow_each_other_without_gaps(client: Any, tenant: Any) -> None:
    for i in range(7):
        await put(client, tenant, f"pg://wh/s.t{i}")
    await collect(client, tenant, 7)
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        page = await changes(client, tenant, cursor=cursor, limit=3)
        seen += [i["qualified_name"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not page["items"]:
            break
    assert seen == [f"pg://wh/s.t{i}" for i in range(7)]


async def test_a_long_poll_wakes_when_an_event_arrives(client: Any, tenant: Any, app: Any) -> None:
    start = await changes(client, tenant)
    assert start["items"] == []
    assert await app.state.runtime.change_waker.ready()
    poll = asyncio.create_task(changes(client, tenant, cursor=start["next_cursor"], wait=25))
    # The poll is waiting (it read nothing yet) before anything is written.
    await asyncio.sleep(0)
    assert not poll.done()
    began = time.monotonic()
    await put(client, tenant, "pg://wh/s.late")
    page = await asyncio.wait_for(poll, 30)
    # Woken by the write, not by the end of its 25 s.
    assert [i["qualified_name"] for i in page["items"]] == ["pg://wh/s.late"]
    assert time.monotonic() - began < 20


async def test_a_long_poll_answers_empty_after_its_wait(client: Any, tenant: Any, other_tenant: Any) -> None:
    start = await changes(client, tenant)
    began = time.monotonic()
    # Another tenant's writes wake nobody here and show nothing.
    writes = asyncio.create_task(put(client, other_tenant, "pg://wh/s.theirs"))
    page = await changes(client, tenant, cursor=start["next_cursor"], wait=1)
    assert time.monotonic() - began >= 1
    assert page["items"] == []
    await writes
    # The cursor of an empty page is as good as any: it goes on from there.
    await put(client, tenant, "pg://wh/s.mine")
    later = await changes(client, tenant, cursor=page["next_cursor"], wait=10)
    assert [i["qualified_name"] for i in later["items"]] == ["pg://wh/s.mine"]


async def test_one_tenant_never_sees_another_tenants_changes(client: Any, tenant: Any, other_tenant: Any) -> None:
    await put(client, tenant, "pg://wh/s.ours")
    await put(client, other_tenant, "pg://wh/s.theirs")
    ours = await collect(client, tenant, 1)
    theirs = await collect(client, other_tenant, 1)
    assert [i["qualified_name"] for i in ours] == ["pg://wh/s.ours"]
    assert [i["qualified_name"] for i in theirs] == ["pg://wh/s.theirs"]
    assert {i["tenant_id"] for i in ours} == {tenant.tenant_id}
    # A cursor is a position, not a key: another tenant's cursor reads one's own feed, nothing else.
    page = await changes(client, other_tenant, cursor=pagination.encode([1, 0]))
    assert [i["qualified_name"] for i in page["items"]] == ["pg://wh/s.theirs"]


async def test_the_feed_needs_a_viewer(client: Any, tenant: Any) -> None:
    r = await client.get("/changes")
    assert_problem(r, 401)
    r = await client.get("/changes", headers={"Authorization": "Bearer nope"})
    assert_problem(r, 401)
    assert (await changes(client, tenant, role="viewer"))["items"] == []
