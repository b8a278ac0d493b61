"""``POST`` and ``DELETE /metadata/lineage``: placeholders, removal by direction with its history and audit,
asynchronous writes, roles, and bad input answered with problem+json and nothing applied."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from .helpers import assert_problem, create, fields_of, fingerprint


def ref(name_or_id: str) -> dict[str, str]:
    try:
        return {"asset_id": str(uuid.UUID(name_or_id))}
    except ValueError:
        return {"qualified_name": name_or_id}


async def post(
    client: httpx.AsyncClient,
    tenant: Any,
    ups: list[str],
    downs: list[str],
    role: str = "editor",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    return await client.post(
        "/metadata/lineage",
        headers={**tenant.headers(role), **(headers or {})},
        json={"upstreams": [ref(u) for u in ups], "downstreams": [ref(d) for d in downs], **extra},
    )


async def link(client: httpx.AsyncClient, tenant: Any, ups: list[str], downs: list[str], **extra: Any) -> Any:
    r = await post(client, tenant, ups, downs, **extra)
    assert r.status_code == 201, r.text
    return r.json()


async def by_name(client: httpx.AsyncClient, tenant: Any, qn: str) -> dict[str, Any]:
    r = await client.get("/metadata/search", params={"qualified_name": qn}, headers=tenant.headers("viewer"))
    (item,) = r.json()["items"]
    result: dict[str, Any] = item
    return result


async def asset(client: httpx.AsyncClient, tenant: Any, asset_id: str) -> dict[str, Any]:
    r = await client.get(f"/metadata/{asset_id}", params={"history_limit": 50}, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def audit(client: httpx.AsyncClient, tenant: Any, asset_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/metadata/audit/{asset_id}", params={"limit": 500}, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def neighbours(client: httpx.AsyncClient, tenant: Any, asset_id: str) -> set[tuple[str, str]]:
    r = await client.get(f"/metadata/lineage/{asset_id}", params={"depth": 1}, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    g = r.json()
    names = {n["asset_id"]: n["qualified_name"] for n in g["nodes"]}
    return {(names[e["upstream_id"]], names[e["downstream_id"]]) for e in g["edges"]}


async def test_placeholders_are_created_then_filled_by_a_real_write(client, tenant):
    src = await create(client, tenant.headers("editor"), "pg://db/raw.orders")
    body = await link(
        client,
        tenant,
        [src["asset_id"]],
        ["pg://db/mart.daily", "pg://db/mart.weekly"],
        process={"qualified_name": "airflow://dag/orders"},
    )
    assert sorted(body["placeholders"]) == ["airflow://dag/orders", "pg://db/mart.daily", "pg://db/mart.weekly"]
    assert sorted((e["upstream"], e["downstream"], e["process"], e["created"]) for e in body["edges"]) == [
        ("pg://db/raw.orders", "pg://db/mart.daily", "airflow://dag/orders", True),
        ("pg://db/raw.orders", "pg://db/mart.weekly", "airflow://dag/orders", True),
    ]

    daily = await by_name(client, tenant, "pg://db/mart.daily")
    assert (daily["placeholder"], daily["type"], daily["version"], daily["name"]) == (True, "unknown", 1, "daily")
    placeholder = await asset(client, tenant, daily["asset_id"])
    assert [v["action"] for v in placeholder["history"]["items"]] == ["asset.placeholder_created"]
    trail = await audit(client, tenant, daily["asset_id"])
    assert [a["action"] for a in trail] == ["asset.placeholder_created", "lineage.added"]
    assert trail[1]["detail"]["upstreams"] == ["pg://db/raw.orders"]
    assert trail[1]["detail"]["process"] == "airflow://dag/orders"

    # The same lineage again: nothing new, no placeholder, no audit entry.
    again = await link(
        client,
        tenant,
        ["pg://db/raw.orders"],
        ["pg://db/mart.daily", "pg://db/mart.weekly"],
        process={"asset_id": (await by_name(client, tenant, "airflow://dag/orders"))["asset_id"]},
    )
    assert again["placeholders"] == [] and {e["created"] for e in again["edges"]} == {False}
    assert len(await audit(client, tenant, daily["asset_id"])) == 2

    # A real write fills the placeholder: same id, the flag flips, its edges stay.
    filled = await create(client, tenant.headers("editor"), "pg://db/mart.daily", description="daily totals")
    assert filled["asset_id"] == daily["asset_id"]
    assert (filled["placeholder"], filled["type"], filled["version"]) == (False, "table", 2)
    assert [v["action"] for v in (await asset(client, tenant, daily["asset_id"]))["history"]["items"]][-1] == (
        "asset.placeholder_created"
    )
    r = await client.get(f"/metadata/lineage/{src['asset_id']}", headers=tenant.headers("viewer"))
    nodes = {n["qualified_name"]: n for n in r.json()["nodes"]}
    assert nodes["pg://db/mart.daily"]["placeholder"] is False
    assert nodes["pg://db/mart.daily"]["type"] == "table"
    assert nodes["pg://db/mart.daily"]["asset_id"] == daily["asset_id"]
    assert nodes["pg://db/mart.weekly"]["placeholder"] is True
    # A later lineage write names it by its name and finds it, placeholder no more.
    assert (await link(client, tenant, ["pg://db/mart.daily"], ["pg://db/report"]))["placeholders"] == [
        "pg://db/report"
    ]
    assert (await by_name(client, tenant, "pg://db/mart.daily"))["placeholder"] is False


async def test_delete_by_direction_is_recorded(client, tenant):
    editor = tenant.headers("editor")
    m = await create(client, editor, "m")
    # u1, u2 → m → d1, d2; m is also the process of p1 → p2; u1 → other does not involve m at all.
    await link(client, tenant, ["u1", "u2"], ["m"])
    await link(client, tenant, ["m"], ["d1", "d2"])
    await link(client, tenant, ["p1"], ["p2"], process={"qualified_name": "m"})
    await link(client, tenant, ["u1"], ["other"])
    p1 = (await by_name(client, tenant, "p1"))["asset_id"]
    u1 = (await by_name(client, tenant, "u1"))["asset_id"]
    # Seen from m, the edge it carries is a path through it: p1 → m → p2.
    assert await neighbours(client, tenant, m["asset_id"]) == {
        ("u1", "m"),
        ("u2", "m"),
        ("m", "d1"),
        ("m", "d2"),
        ("p1", "p2"),
    }

    r = await client.delete(f"/metadata/lineage/{m['asset_id']}", params={"direction": "upstream"}, headers=editor)
    assert r.status_code == 200, r.text
    assert r.json() == {"asset_id": m["asset_id"], "removed": 2, "version": 2}
    assert await neighbours(client, tenant, m["asset_id"]) == {("m", "d1"), ("m", "d2"), ("p1", "p2")}
    assert await neighbours(client, tenant, u1) == {("u1", "other")}
    assert await neighbours(client, tenant, p1) == {("p1", "p2")}

    r = await client.delete(f"/metadata/lineage/{m['asset_id']}", params={"direction": "downstream"}, headers=editor)
    assert r.json() == {"asset_id": m["asset_id"], "removed": 2, "version": 3}
    # One direction takes m's own edges only: removing a carried edge would take both halves of its path.
    assert await neighbours(client, tenant, m["asset_id"]) == {("p1", "p2")}
    assert await neighbours(client, tenant, p1) == {("p1", "p2")}  # it carries that edge; not up- or downstream

    # Nothing left in that direction: no new version, no audit entry.
    r = await client.delete(f"/metadata/lineage/{m['asset_id']}", params={"direction": "downstream"}, headers=editor)
    assert r.json() == {"asset_id": m["asset_id"], "removed": 0, "version": 3}

    await link(client, tenant, ["u1"], ["m"])
    await link(client, tenant, ["m"], ["d1"])
    r = await client.delete(f"/metadata/lineage/{m['asset_id']}", headers=editor)  # both is the default
    assert r.json() == {"asset_id": m["asset_id"], "removed": 3, "version": 4}
    assert await neighbours(client, tenant, m["asset_id"]) == set()
    assert await neighbours(client, tenant, p1) == set()  # "both" takes the edges it carries as a process too
    assert await neighbours(client, tenant, u1) == {("u1", "other")}

    # Each removal is a version of the asset, saying what went, and an audit entry.
    history = (await asset(client, tenant, m["asset_id"]))["history"]["items"]
    assert [v["version"] for v in history] == [4, 3, 2, 1]
    assert [v["action"] for v in history[:3]] == ["lineage.removed"] * 3
    assert [v["changes"]["lineage"]["direction"] for v in history[:3]] == ["both", "downstream", "upstream"]
    assert [len(v["changes"]["lineage"]["removed"]) for v in history[:3]] == [3, 2, 2]
    names = {(await by_name(client, tenant, n))["asset_id"]: n for n in ("u1", "u2", "m", "d1", "d2", "p1", "p2")}
    assert sorted(
        (names[e["upstream_id"]], names[e["downstream_id"]]) for e in history[2]["changes"]["lineage"]["removed"]
    ) == [("u1", "m"), ("u2", "m")]
    assert all(v["actor"] and v["event_id"] for v in history[:3])
    trail = [a for a in await audit(client, tenant, m["asset_id"]) if a["action"] == "lineage.removed"]
    assert [(a["version_before"], a["version_after"], a["detail"]["removed"]) for a in trail] == [
        (1, 2, 2),
        (2, 3, 2),
        (3, 4, 3),
    ]
    assert {a["event_id"] for a in trail} == {v["event_id"] for v in history[:3]}

    r = await client.delete(f"/metadata/lineage/{m['asset_id']}", params={"direction": "sideways"}, headers=editor)
    assert fields_of(assert_problem(r, 422, "validation")) == {"direction"}


async def test_a_deleted_assets_lineage_can_still_be_removed(client, tenant):
    editor = tenant.headers("editor")
    m = await create(client, editor, "m")
    await link(client, tenant, ["u"], ["m"])
    await link(client, tenant, ["m"], ["d"])
    r = await client.delete(f"/metadata/{m['asset_id']}", headers=editor)
    assert r.status_code == 200, r.text
    deleted_version = r.json()["version"]
    # Deleting an asset leaves its edges: its neighbours' graphs still show it, marked deleted ...
    d = await by_name(client, tenant, "d")
    r = await client.get(
        f"/metadata/lineage/{d['asset_id']}", params={"direction": "upstream"}, headers=tenant.headers("viewer")
    )
    assert {n["qualified_name"]: n["deleted"] for n in r.json()["nodes"]} == {"d": False, "m": True, "u": False}
    # ... so removing them must work too (it answered 404 before: the id was looked up among live assets).
    r = await client.delete(f"/metadata/lineage/{m['asset_id']}", headers=editor)
    assert r.status_code == 200, r.text
    assert r.json() == {"asset_id": m["asset_id"], "removed": 2, "version": deleted_version + 1}
    r = await client.get(
        f"/metadata/{m['asset_id']}", params={"include_deleted": True}, headers=tenant.headers("viewer")
    )
    assert r.json()["deleted_at"] is not None  # still deleted, one version later
    assert r.json()["history"]["items"][0]["action"] == "lineage.removed"
    assert await neighbours(client, tenant, d["asset_id"]) == set()


async def settled(client: httpx.AsyncClient, tenant: Any, accepted: httpx.Response) -> dict[str, Any]:
    """The status of an accepted write once the pipeline is done with it (bounded polling)."""
    url = accepted.headers["Location"].removeprefix("/lily/v1")
    for _ in range(250):  # the pipeline applies a write in milliseconds; this allows it seconds
        state: dict[str, Any] = (await client.get(url, headers=tenant.headers("viewer"))).json()
        if state["state"] != "accepted":
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} still pending")


async def test_async_write_and_roles(client, tenant, app):
    r = await post(client, tenant, ["a"], ["b"], headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    assert r.headers["Preference-Applied"] == "respond-async"
    assert r.headers["Location"] == r.json()["status_url"] and r.json()["status"] == "accepted"
    state = await settled(client, tenant, r)
    assert state["state"] == "applied", state
    assert state["kind"] == "lineage.upsert"
    assert sorted(state["result"]["placeholders"]) == ["a", "b"]
    a = await by_name(client, tenant, "a")

    r = await client.delete(
        f"/metadata/lineage/{a['asset_id']}", headers={**tenant.headers("editor"), "Prefer": "respond-async"}
    )
    assert r.status_code == 202, r.text
    state = await settled(client, tenant, r)
    assert (state["state"], state["kind"], state["result"]["removed"]) == ("applied", "lineage.delete", 1)

    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    assert_problem(await post(client, tenant, ["a"], ["c"], role="viewer"), 403, "forbidden")
    r = await client.delete(f"/metadata/lineage/{a['asset_id']}", headers=tenant.headers("viewer"))
    assert_problem(r, 403, "forbidden")
    r = await client.post("/metadata/lineage", json={"upstreams": [ref("a")], "downstreams": [ref("c")]})
    assert_problem(r, 401, "unauthorized")
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before
    # Reading is a viewer's right.
    r = await client.get(f"/metadata/lineage/{a['asset_id']}/impact", headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text


async def test_unknown_ids_and_self_loops_apply_nothing(client, tenant, app):
    db = app.state.runtime.db
    mine = await create(client, tenant.headers("editor"), "pg://db/t")
    await link(client, tenant, ["pg://db/s"], ["pg://db/t"])
    before = await fingerprint(db, tenant.tenant_id)
    unknown = str(uuid.uuid4())

    # An unknown id anywhere in the request: 404, and not even the placeholders of the other names.
    for ups, downs, extra in [
        ([unknown], ["pg://db/new"], {}),
        (["pg://db/new"], [unknown, "pg://db/t"], {}),
        (["pg://db/new"], ["pg://db/t"], {"process": {"asset_id": unknown}}),
    ]:
        body = assert_problem(await post(client, tenant, ups, downs, **extra), 404, "not-found")
        assert unknown in body["detail"]
    r = await client.delete(f"/metadata/lineage/{unknown}", headers=tenant.headers("editor"))
    assert unknown in assert_problem(r, 404, "not-found")["detail"]
    r = await client.get(f"/metadata/lineage/{unknown}/impact", headers=tenant.headers("viewer"))
    assert unknown in assert_problem(r, 404, "not-found")["detail"]
    assert await fingerprint(db, tenant.tenant_id) == before

    # Self-loops, however they are spelled, name the offending field.
    for ups, downs in [
        (["pg://db/t"], ["pg://db/t"]),
        ([mine["asset_id"]], [mine["asset_id"]]),
        (["pg://db/x", "pg://db/t"], ["pg://db/t", "pg://db/y"]),
        (["new"], [" new "]),
    ]:
        problem = assert_problem(await post(client, tenant, ups, downs), 422, "validation")
        assert fields_of(problem) == {"downstreams"}, problem
    problem = assert_problem(
        await post(client, tenant, ["pg://db/s"], ["pg://db/t"], process={"qualified_name": "pg://db/t"}),
        422,
        "validation",
    )
    assert fields_of(problem) == {"process"}
    assert await fingerprint(db, tenant.tenant_id) == before

    # An id on one side and the name of the same asset on the other is only seen once resolved; still a 422
    # naming the field, and nothing applied (the failed event stays in the log, as any refused write does).
    for ups, downs, extra, field in [
        ([mine["asset_id"]], ["pg://db/t"], {}, "downstreams"),
        (["pg://db/t", "pg://db/other"], [mine["asset_id"]], {}, "downstreams"),
        (["pg://db/s"], [mine["asset_id"]], {"process": {"qualified_name": "pg://db/t"}}, "process"),
    ]:
        problem = assert_problem(await post(client, tenant, ups, downs, **extra), 422, "validation")
        assert fields_of(problem) == {field}, problem
    after = await fingerprint(db, tenant.tenant_id)
    assert {k: v for k, v in after.items() if k != "events"} == {k: v for k, v in before.items() if k != "events"}
    refused = [e for e in after["events"] if e not in before["events"]]
    assert [e["status"] for e in refused] == ["failed"] * 3


async def test_malformed_requests(client, tenant, app):
    db = app.state.runtime.db
    await link(client, tenant, ["s"], ["t"])
    before = await fingerprint(db, tenant.tenant_id)
    h = tenant.headers("editor")
    s, t = {"qualified_name": "s"}, {"qualified_name": "t"}

    r = await client.post(
        "/metadata/lineage", content=b'{"upstreams": [', headers={**h, "Content-Type": "application/json"}
    )
    assert_problem(r, 400, "malformed-json")

    cases: list[tuple[Any, set[str]]] = [
        ({"downstreams": [t]}, {"upstreams"}),
        ({"upstreams": [s]}, {"downstreams"}),
        ({}, {"upstreams", "downstreams"}),
        ([{"upstreams": [s], "downstreams": [t]}], {"body"}),
        ({"upstreams": [], "downstreams": [t]}, {"upstreams"}),
        ({"upstreams": s, "downstreams": [t]}, {"upstreams"}),
        ({"upstreams": [{}], "downstreams": [t]}, {"upstreams[0]"}),
        ({"upstreams": [{"asset_id": str(uuid.uuid4()), "qualified_name": "s"}], "downstreams": [t]}, {"upstreams[0]"}),
        ({"upstreams": [{"asset_id": "not-a-uuid"}], "downstreams": [t]}, {"upstreams[0].asset_id"}),
        ({"upstreams": [{"qualified_name": ""}], "downstreams": [t]}, {"upstreams[0].qualified_name"}),
        ({"upstreams": [{"qualified_name": "a\u0000b"}], "downstreams": [t]}, {"upstreams[0].qualified_name"}),
        ({"upstreams": [{"name": "s"}], "downstreams": [t]}, {"upstreams[0].name"}),
        ({"upstreams": [s], "downstreams": [t], "extra": 1}, {"extra"}),
        (
            {"upstreams": [s], "downstreams": [t], "column_mappings": [{"column": "c"}]},
            {"column_mappings[0].upstreams"},
        ),
        (
            {
                "upstreams": [s],
                "downstreams": [t],
                "column_mappings": [
                    {"column": "c", "upstreams": [{"asset": {"qualified_name": "elsewhere"}, "column": "x"}]}
                ],
            },
            {"column_mappings"},
        ),
        (
            {
                "upstreams": [s],
                "downstreams": [t, {"qualified_name": "t2"}],
                "column_mappings": [{"column": "c", "upstreams": [{"asset": s, "column": "x"}]}],
            },
            {"column_mappings"},
        ),
        (
            {
                "upstreams": [s],
                "downstreams": [t],
                "column_mappings": [{"column": " ", "upstreams": [{"asset": s, "column": "x"}]}],
            },
            {"column_mappings[0].column"},
        ),
        # Every upstream feeds every downstream: the product is bounded (here 101 * 100 edges).
        (
            {
                "upstreams": [{"qualified_name": f"u{i}"} for i in range(101)],
                "downstreams": [{"qualified_name": f"d{i}"} for i in range(100)],
            },
            {"downstreams"},
        ),
    ]
    for body, fields in cases:
        r = await client.post("/metadata/lineage", json=body, headers=h)
        problem = assert_problem(r, 422, "validation")
        assert fields_of(problem) == fields, (body, problem)

    for params, field in [({"direction": "sideways"}, "direction"), ({"columns": "maybe"}, "columns")]:
        r = await client.get(f"/metadata/lineage/{uuid.uuid4()}", params=params, headers=tenant.headers("viewer"))
        assert fields_of(assert_problem(r, 422, "validation")) == {field}
    for method, path in [
        ("GET", "/metadata/lineage/not-a-uuid"),
        ("GET", "/metadata/lineage/42/impact"),
        ("DELETE", "/metadata/lineage/not-a-uuid"),
    ]:
        r = await client.request(method, path, headers=h)
        assert fields_of(assert_problem(r, 422, "validation")) == {"asset_id"}
    assert await fingerprint(db, tenant.tenant_id) == before
