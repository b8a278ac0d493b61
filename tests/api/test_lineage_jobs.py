"""Lineage around a job (a process as a node of its own), column mappings that spell an asset both
ways, and lineage naming a deleted asset."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from lily.domain.events import LINEAGE_UPSERT, NewEvent

from .helpers import assert_problem, create, fields_of, fingerprint

JOB = "airflow://dag/load"


def ref(name_or_id: str) -> dict[str, str]:
    return {"asset_id": name_or_id} if re.fullmatch(r"[0-9a-f-]{36}", name_or_id) else {"qualified_name": name_or_id}


async def post(
    client: httpx.AsyncClient, tenant: Any, ups: list[str], downs: list[str], **extra: Any
) -> httpx.Response:
    return await client.post(
        "/metadata/lineage",
        headers=tenant.headers("editor"),
        json={"upstreams": [ref(u) for u in ups], "downstreams": [ref(d) for d in downs], **extra},
    )


async def link(client: httpx.AsyncClient, tenant: Any, ups: list[str], downs: list[str], **extra: Any) -> Any:
    r = await post(client, tenant, ups, downs, **extra)
    assert r.status_code == 201, r.text
    return r.json()


async def by_name(client: httpx.AsyncClient, tenant: Any, qn: str) -> str:
    r = await client.get("/metadata/search", params={"qualified_name": qn}, headers=tenant.headers("viewer"))
    (item,) = r.json()["items"]
    return str(item["asset_id"])


async def get(client: httpx.AsyncClient, tenant: Any, path: str, **params: Any) -> httpx.Response:
    r = await client.get(f"/metadata/lineage/{path}", params=params, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    return r


async def job_graph(client: httpx.AsyncClient, tenant: Any) -> str:
    """x → in1; in1, in2 → out1, out2 through JOB; out1 → far. Returns JOB's id."""
    await link(client, tenant, ["x"], ["in1"])
    await link(client, tenant, ["in1", "in2"], ["out1", "out2"], process={"qualified_name": JOB})
    await link(client, tenant, ["out1"], ["far"])
    return await by_name(client, tenant, JOB)


def depths(g: dict[str, Any]) -> dict[str, int]:
    return {n["qualified_name"]: n["depth"] for n in g["nodes"]}


def paths(g: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    """(upstream, downstream, process) names of each edge; an end outside the answer is "?"."""
    names = {n["asset_id"]: n["qualified_name"] for n in g["nodes"]}
    return {
        (names.get(e["upstream_id"], "?"), names.get(e["downstream_id"], "?"), e["process_qualified_name"])
        for e in g["edges"]
    }


async def test_a_job_is_a_node_between_its_inputs_and_outputs(client, tenant):
    job = await job_graph(client, tenant)
    carried = {(u, d, JOB) for u in ("in1", "in2") for d in ("out1", "out2")}

    g = (await get(client, tenant, job, depth=1)).json()
    assert depths(g) == {JOB: 0, "in1": 1, "in2": 1, "out1": 1, "out2": 1}
    assert paths(g) == carried and not g["truncated"]
    g = (await get(client, tenant, job, depth=2)).json()
    assert depths(g) == {JOB: 0, "in1": 1, "in2": 1, "out1": 1, "out2": 1, "x": 2, "far": 2}
    assert paths(g) == carried | {("x", "in1", None), ("out1", "far", None)}

    # One direction: the job's outputs (or inputs) only; its edges stand for the half job → output.
    g = (await get(client, tenant, job, direction="downstream", depth=5)).json()
    assert depths(g) == {JOB: 0, "out1": 1, "out2": 1, "far": 2}
    assert paths(g) == {("?", d, JOB) for d in ("out1", "out2")} | {("out1", "far", None)}
    g = (await get(client, tenant, job, direction="upstream", depth=5)).json()
    assert depths(g) == {JOB: 0, "in1": 1, "in2": 1, "x": 2}
    assert paths(g) == {(u, "?", JOB) for u in ("in1", "in2")} | {("x", "in1", None)}

    # From a dataset nothing changes: the job labels the edges it carries and is no node.
    g = (await get(client, tenant, await by_name(client, tenant, "in1"), direction="downstream", depth=1)).json()
    assert depths(g) == {"in1": 0, "out1": 1, "out2": 1}
    assert paths(g) == {("in1", "out1", JOB), ("in1", "out2", JOB)}


async def test_impact_of_a_job_is_its_outputs_and_what_follows(client, tenant):
    job = await job_graph(client, tenant)
    report = (await get(client, tenant, f"{job}/impact")).json()
    found = {a["qualified_name"]: (a["distance"], [p["qualified_name"] for p in a["path"]]) for a in report["assets"]}
    assert found == {"out1": (1, [JOB, "out1"]), "out2": (1, [JOB, "out2"]), "far": (2, [JOB, "out1", "far"])}
    # An input's impact goes through the job's edges as before, the job named on them, not a hop.
    report = (await get(client, tenant, f"{await by_name(client, tenant, 'in1')}/impact")).json()
    assert {a["qualified_name"]: a["distance"] for a in report["assets"]} == {"out1": 1, "out2": 1, "far": 2}


MERMAID_NODE = re.compile(r'^    (n\d+)\["([^"]*)"\]$')
MERMAID_EDGE = re.compile(r'^    (n\d+) -->(?:\|"([^"]*)"\|)? (n\d+)$')
DOT_NODE = re.compile(r'^    (n\d+) \[label="([^"]*)"')
DOT_EDGE = re.compile(r'^    (n\d+) -> (n\d+)(?: \[label="([^"]*)"\])?;$')


def drawn(text: str, node: re.Pattern[str], edge: re.Pattern[str], dot: bool = False) -> set[tuple[str, ...]]:
    lines = text.splitlines()
    names = {m[1]: m[2] for m in map(node.match, lines) if m}
    arrows = [m for m in map(edge.match, lines) if m]
    assert len(arrows) == len({m[0] for m in arrows}), text  # each arrow once
    if dot:
        return {(names[m[1]], names[m[2]], m[3] or "") for m in arrows}
    return {(names[m[1]], names[m[3]], m[2] or "") for m in arrows}


async def test_renderings_draw_the_path_through_the_job(client, tenant):
    job = await job_graph(client, tenant)
    through = {(u, JOB, "") for u in ("in1", "in2")} | {(JOB, d, "") for d in ("out1", "out2")}
    for fmt, node, edge, dot in (("mermaid", MERMAID_NODE, MERMAID_EDGE, False), ("dot", DOT_NODE, DOT_EDGE, True)):
        r = await get(client, tenant, job, format=fmt, depth=1)
        assert drawn(r.text, node, edge, dot) == through, r.text
        r = await get(client, tenant, job, format=fmt, direction="downstream", depth=2)
        assert drawn(r.text, node, edge, dot) == {(JOB, "out1", ""), (JOB, "out2", ""), ("out1", "far", "")}
        # From a dataset, the job is the label of the arrow, as before.
        r = await get(client, tenant, await by_name(client, tenant, "in2"), format=fmt, direction="downstream", depth=1)
        assert drawn(r.text, node, edge, dot) == {("in2", "out1", JOB), ("in2", "out2", JOB)}


async def test_a_job_that_is_also_an_endpoint(client, tenant):
    # m is an ordinary step (u → m → d) and the process of p1 → p2: from m, both are its neighbours.
    await link(client, tenant, ["u"], ["m"])
    await link(client, tenant, ["m"], ["d"])
    await link(client, tenant, ["p1"], ["p2"], process={"qualified_name": "m"})
    m = await by_name(client, tenant, "m")
    g = (await get(client, tenant, m, depth=1)).json()
    assert depths(g) == {"m": 0, "u": 1, "d": 1, "p1": 1, "p2": 1}
    report = (await get(client, tenant, f"{m}/impact")).json()
    assert {a["qualified_name"] for a in report["assets"]} == {"d", "p2"}


async def test_column_mappings_may_spell_an_asset_by_id_or_by_name(client, tenant, app):
    src = await create(client, tenant.headers("editor"), "pg://db/src")
    dst = await create(client, tenant.headers("editor"), "pg://db/dst")
    by_id, by_qn = {"asset_id": src["asset_id"]}, {"qualified_name": "pg://db/src"}
    for listed, mapped in ((by_id, by_qn), (by_qn, by_id)):
        body = await link(
            client,
            tenant,
            [],
            [],
            upstreams=[listed],
            downstreams=[{"asset_id": dst["asset_id"]}],
            column_mappings=[
                {
                    "column": "total",
                    "asset": {"qualified_name": "pg://db/dst"},
                    "upstreams": [{"asset": mapped, "column": "amount"}],
                }
            ],
        )
        assert [(e["upstream"], e["downstream"]) for e in body["edges"]] == [("pg://db/src", "pg://db/dst")]
    g = (await get(client, tenant, src["asset_id"], direction="downstream", columns=True)).json()
    (edge,) = g["edges"]
    assert [(c["downstream_column"], c["upstream_column"]) for c in edge["columns"]] == [("total", "amount")]

    # Another asset, however spelled, is still refused, and nothing is applied.
    other = await create(client, tenant.headers("editor"), "pg://db/other")
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    for mapped in ({"asset_id": other["asset_id"]}, {"qualified_name": "pg://db/other"}):
        r = await post(
            client,
            tenant,
            [],
            [],
            upstreams=[by_id],
            downstreams=[{"qualified_name": "pg://db/dst"}],
            column_mappings=[{"column": "total", "upstreams": [{"asset": mapped, "column": "amount"}]}],
        )
        problem = assert_problem(r, 422, "validation")
        assert "not among the upstreams" in problem["detail"] and fields_of(problem) == {"column_mappings"}
    r = await post(
        client,
        tenant,
        [],
        [],
        upstreams=[by_qn],
        downstreams=[{"asset_id": dst["asset_id"]}],
        column_mappings=[
            {
                "column": "c",
                "asset": {"asset_id": other["asset_id"]},
                "upstreams": [{"asset": by_qn, "column": "amount"}],
            }
        ],
    )
    assert "not among the downstreams" in assert_problem(r, 422, "validation")["detail"]
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


async def test_a_deleted_asset_is_refused_by_id_and_by_name_alike(client, tenant, app):
    editor = tenant.headers("editor")
    gone = await create(client, editor, "pg://db/gone")
    r = await client.delete(f"/metadata/{gone['asset_id']}", headers=editor)
    assert r.status_code == 200, r.text
    db = app.state.runtime.db
    before = await fingerprint(db, tenant.tenant_id)
    for spelled in (gone["asset_id"], "pg://db/gone"):
        for ups, downs, extra in (
            ([spelled], ["pg://db/new"], {}),
            (["pg://db/new"], [spelled], {}),
            (["pg://db/a"], ["pg://db/b"], {"process": ref(spelled)}),
        ):
            problem = assert_problem(await post(client, tenant, ups, downs, **extra), 409, "conflict")
            assert "pg://db/gone" in problem["detail"] and "deleted" in problem["detail"], problem
            assert problem["asset_id"] == gone["asset_id"]
    assert await fingerprint(db, tenant.tenant_id) == before  # not even the other names' placeholders

    # Deleted after the API looked: the apply stage refuses it the same way.
    event = NewEvent(
        tenant.tenant_id,
        "pg://db/new",
        LINEAGE_UPSERT,
        {"upstreams": ["pg://db/gone"], "downstreams": ["pg://db/new"]},
        "test",
    )
    (accepted,) = await app.state.runtime.writer.append_many(tenant.tenant_id, [event])
    state = await settled(client, tenant, f"/events/{accepted.event_id}")
    assert state["state"] == "failed" and "deleted" in str(state["error"]), state

    # Written again, it is live and can be linked.
    await create(client, editor, "pg://db/gone")
    body = await link(client, tenant, [gone["asset_id"]], ["pg://db/new"])
    assert body["placeholders"] == ["pg://db/new"]


async def settled(client: httpx.AsyncClient, tenant: Any, url: str) -> dict[str, Any]:
    for _ in range(250):
        state: dict[str, Any] = (await client.get(url, headers=tenant.headers("viewer"))).json()
        if state["state"] != "accepted":
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} still pending")
