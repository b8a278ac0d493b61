"""Lineage never crosses tenants: another tenant's ids answer like unknown ones, and equal qualified names
in two tenants are two unrelated assets, neither of which ever shows in the other's graph or impact."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from .helpers import assert_problem, create, fingerprint

SHARED = ["pg://wh/raw.payroll", "pg://wh/mart.payroll", "airflow://dag/payroll"]


def scrubbed(r: httpx.Response, target: str) -> tuple[int, str, Any]:
    """Status, content type and body of an answer, with the id it was asked about blanked out."""
    return r.status_code, r.headers["content-type"], r.text.replace(target, "<id>")


async def link(
    client: httpx.AsyncClient, tenant: Any, ups: list[str], downs: list[str], process: str | None = None
) -> dict[str, Any]:
    r = await client.post(
        "/metadata/lineage",
        headers=tenant.headers("editor"),
        json={
            "upstreams": [{"qualified_name": u} for u in ups],
            "downstreams": [{"qualified_name": d} for d in downs],
            **({"process": {"qualified_name": process}} if process else {}),
            "column_mappings": [
                {
                    "column": "total",
                    "asset": {"qualified_name": downs[0]},
                    "upstreams": [{"asset": {"qualified_name": ups[0]}, "column": "salary"}],
                }
            ],
        },
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def ids_of(client: httpx.AsyncClient, tenant: Any, names: list[str]) -> dict[str, str]:
    out = {}
    for qn in names:
        r = await client.get("/metadata/search", params={"qualified_name": qn}, headers=tenant.headers("viewer"))
        (item,) = r.json()["items"]
        out[qn] = str(item["asset_id"])
    return out


async def build(client: httpx.AsyncClient, tenant: Any, private: str) -> dict[str, str]:
    """The shared names as lineage, plus a downstream whose name only this tenant uses."""
    await create(client, tenant.headers("editor"), SHARED[0], description=f"{private} source")
    await link(client, tenant, [SHARED[0]], [SHARED[1]], process=SHARED[2])
    await link(client, tenant, [SHARED[1]], [private])
    return await ids_of(client, tenant, [*SHARED, private])


async def everything_visible(client: httpx.AsyncClient, tenant: Any, ids: dict[str, str]) -> str:
    """Every lineage answer about every asset of the tenant, in every format, as one text."""
    texts = []
    for asset_id in ids.values():
        for params in (
            {"direction": "both", "depth": 20, "columns": True},
            {"format": "mermaid", "depth": 20},
            {"format": "dot", "depth": 20},
        ):
            r = await client.get(f"/metadata/lineage/{asset_id}", params=params, headers=tenant.headers("viewer"))
            assert r.status_code == 200, r.text
            texts.append(r.text)
        r = await client.get(f"/metadata/lineage/{asset_id}/impact", headers=tenant.headers("viewer"))
        assert r.status_code == 200, r.text
        texts.append(r.text)
    return "\n".join(texts)


async def test_same_names_in_two_tenants_never_meet(client, tenant, other_tenant):
    a_ids = await build(client, tenant, "pg://wh/acme_only.bonus")
    b_ids = await build(client, other_tenant, "pg://wh/globex_only.audit")
    # Same names, different assets; B's placeholders are B's own, not links to A's real assets.
    assert not set(a_ids.values()) & set(b_ids.values())

    a_text = await everything_visible(client, tenant, a_ids)
    b_text = await everything_visible(client, other_tenant, b_ids)
    for asset_id in a_ids.values():
        assert asset_id not in b_text
    for asset_id in b_ids.values():
        assert asset_id not in a_text
    assert "acme_only" not in b_text and "globex_only" not in a_text

    for tenant_, ids, private in (
        (tenant, a_ids, "pg://wh/acme_only.bonus"),
        (other_tenant, b_ids, "pg://wh/globex_only.audit"),
    ):
        r = await client.get(
            f"/metadata/lineage/{ids[SHARED[0]]}",
            params={"depth": 20, "columns": True},
            headers=tenant_.headers("viewer"),
        )
        g = r.json()
        assert {n["asset_id"] for n in g["nodes"]} == {ids[SHARED[0]], ids[SHARED[1]], ids[private]}
        assert {e["process_id"] for e in g["edges"]} == {ids[SHARED[2]], None}
        assert len(g["edges"]) == 2
        r = await client.get(f"/metadata/lineage/{ids[SHARED[0]]}/impact", headers=tenant_.headers("viewer"))
        assert [(x["asset_id"], [p["asset_id"] for p in x["path"]]) for x in r.json()["assets"]] == [
            (ids[SHARED[1]], [ids[SHARED[0]], ids[SHARED[1]]]),
            (ids[private], [ids[SHARED[0]], ids[SHARED[1]], ids[private]]),
        ]

    # Removing lineage in one tenant leaves the other's alone.
    r = await client.delete(f"/metadata/lineage/{b_ids[SHARED[1]]}", headers=other_tenant.headers("editor"))
    assert r.json()["removed"] == 2
    assert a_text == await everything_visible(client, tenant, a_ids)


async def test_another_tenants_ids_answer_like_unknown_ones(client, app, tenant, other_tenant):
    theirs = await build(client, other_tenant, "pg://wh/globex_only.audit")
    mine = await build(client, tenant, "pg://wh/acme_only.bonus")
    their_id = theirs[SHARED[0]]
    db = app.state.runtime.db
    before_theirs = await fingerprint(db, other_tenant.tenant_id)
    before_mine = await fingerprint(db, tenant.tenant_id)
    mine_ref = {"asset_id": mine[SHARED[1]]}

    def bodies(target: str) -> list[dict[str, Any]]:
        them = {"asset_id": target}
        return [
            {"upstreams": [them], "downstreams": [mine_ref]},
            {"upstreams": [mine_ref], "downstreams": [them]},
            {"upstreams": [{"qualified_name": "new.one"}], "downstreams": [mine_ref], "process": them},
            {
                "upstreams": [them],
                "downstreams": [{"qualified_name": "new.two"}],
                "column_mappings": [{"column": "c", "upstreams": [{"asset": them, "column": "salary"}]}],
            },
        ]

    for their in theirs.values():
        unknown = str(uuid.uuid4())
        requests: list[tuple[str, str, dict[str, Any], str]] = [
            ("GET", f"/metadata/lineage/{{}}?{q}", {}, "viewer")
            for q in ("direction=both", "direction=upstream", "columns=true", "format=mermaid", "format=dot")
        ] + [
            ("GET", "/metadata/lineage/{}/impact", {}, "viewer"),
            ("DELETE", "/metadata/lineage/{}", {}, "editor"),
            ("DELETE", "/metadata/lineage/{}?direction=downstream", {}, "editor"),
        ]
        requests += [("POST", "/metadata/lineage", {"body": i}, "editor") for i in range(4)]
        for method, template, extra, role in requests:
            answers = []
            for target in (their, unknown):
                json = bodies(target)[extra["body"]] if "body" in extra else None
                r = await client.request(method, template.format(target), json=json, headers=tenant.headers(role))
                assert_problem(r, 404, "not-found")
                assert "payroll" not in r.text and "globex" not in r.text
                answers.append(scrubbed(r, target))
            assert answers[0] == answers[1], (method, template, answers)

    # Nothing changed on either side: no placeholders for "new.one", no edges, no events.
    assert await fingerprint(db, tenant.tenant_id) == before_mine
    assert await fingerprint(db, other_tenant.tenant_id) == before_theirs
    # And the owner still sees its lineage whole.
    r = await client.get(f"/metadata/lineage/{their_id}/impact", headers=other_tenant.headers("viewer"))
    assert len(r.json()["assets"]) == 2


async def drained(app: Any, *tenants: Any) -> None:
    """Wait (bounded) until none of the tenants' events waits to be applied: follow-ups included."""
    for _ in range(400):
        waiting = 0
        for t in tenants:
            async with app.state.runtime.db.tenant(t.tenant_id) as conn:
                cur = await conn.execute("SELECT count(*) AS n FROM events WHERE status = 'accepted'")
                waiting += (await cur.fetchone())["n"]
        if waiting == 0:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the pipeline did not drain")


async def test_propagation_stays_in_its_tenant(client, app, tenant, other_tenant):
    columns = {"columns": [{"name": "salary"}]}
    for t in (tenant, other_tenant):
        await create(client, t.headers("editor"), SHARED[0], attributes=columns)
        await link(client, t, [SHARED[0]], [SHARED[1]])
    await create(
        client, tenant.headers("editor"), SHARED[0], attributes={"columns": [{"name": "salary"}, {"name": "bonus"}]}
    )
    await drained(app, tenant, other_tenant)

    def told(history: list[dict[str, Any]]) -> list[str]:
        return [v["origin"]["asset_id"] for v in history if v["action"] == "asset.upstream_changed"]

    a_ids = await ids_of(client, tenant, SHARED[:2])
    b_ids = await ids_of(client, other_tenant, SHARED[:2])
    r = await client.get(f"/metadata/{a_ids[SHARED[1]]}", headers=tenant.headers("viewer"))
    assert told(r.json()["history"]["items"]) == [a_ids[SHARED[0]]]
    r = await client.get(f"/metadata/{b_ids[SHARED[1]]}", headers=other_tenant.headers("viewer"))
    assert told(r.json()["history"]["items"]) == []
