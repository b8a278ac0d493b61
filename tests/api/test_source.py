"""The source of an asset is core data: every writer records itself (``api``, ``bulk``, ``openlineage``,
``propagation``), the API document shows it, and propagation reads it — whether or not the optional
``source_stamp`` hook runs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest

from lily.config import Settings

OL_PRODUCER = "https://example.com/lily-tests"
OL_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"


@pytest.fixture(params=["*", "none"], ids=["hooks-on", "hooks-off"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Every test twice: with every hook, and with none (``LILY_HOOKS=none``: no ``source_stamp``)."""
    return settings.model_copy(update={"hooks": request.param})


async def wait_idle(app: Any, tenant: Any, rounds: int = 400) -> None:
    """Poll (bounded) until none of the tenant's events waits to be applied: follow-ups included."""
    for _ in range(rounds):
        async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM events WHERE status = 'accepted'")
            row = await cur.fetchone()
        if row["n"] == 0:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the pipeline did not drain")


async def put(client: Any, tenant: Any, qn: str, **fields: Any) -> dict[str, Any]:
    r = await client.post(
        "/metadata", json={"qualified_name": qn, "type": "table", **fields}, headers=tenant.headers("editor")
    )
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


async def by_name(client: Any, tenant: Any, qn: str) -> dict[str, Any]:
    r = await client.get("/metadata/search", params={"qualified_name": qn}, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    (found,) = r.json()["items"]
    r = await client.get(f"/metadata/{found['asset_id']}", headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def openlineage_run(client: Any, tenant: Any, inputs: list[str], outputs: list[str]) -> None:
    """A COMPLETE run event of job ``etl/load`` through the OpenLineage endpoint."""
    event = {
        "eventType": "COMPLETE",
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": OL_PRODUCER,
        "schemaURL": OL_SCHEMA,
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "etl", "name": "load"},
        "inputs": [{"namespace": "pg://wh", "name": n} for n in inputs],
        "outputs": [{"namespace": "pg://wh", "name": n} for n in outputs],
    }
    r = await client.post("http://lily.test/api/v1/lineage", json=event, headers=tenant.headers("editor"))
    assert r.status_code == 201, r.text


async def link(client: Any, tenant: Any, up: str, down: str) -> None:
    r = await client.post(
        "/metadata/lineage",
        json={"upstreams": [{"qualified_name": up}], "downstreams": [{"qualified_name": down}]},
        headers=tenant.headers("editor"),
    )
    assert r.status_code == 201, r.text


async def test_each_writer_records_itself(client, tenant, app, settings):
    created = await put(client, tenant, "pg://wh/by_api")
    assert (created["source"], created["has_active_source"]) == ("api", False)

    body = orjson.dumps({"qualified_name": "pg://wh/by_bulk", "type": "table"}) + b"\n"
    r = await client.post(
        "/metadata/bulk",
        content=body,
        headers=tenant.headers("editor", **{"Content-Type": "application/x-ndjson"}),
    )
    assert r.status_code == 202, r.text
    r = await client.get(
        f"/metadata/bulk/status/{r.json()['job_id']}", params={"wait": 20}, headers=tenant.headers("viewer")
    )
    assert r.json()["applied"] == 1, r.text

    await openlineage_run(client, tenant, ["raw.orders"], ["mart.orders"])
    await wait_idle(app, tenant)

    seen = {
        qn: ((doc := await by_name(client, tenant, qn))["source"], doc["has_active_source"])
        for qn in ("pg://wh/by_api", "pg://wh/by_bulk", "pg://wh/raw.orders", "pg://wh/mart.orders", "etl/load")
    }
    assert seen == {
        "pg://wh/by_api": ("api", False),
        "pg://wh/by_bulk": ("bulk", False),
        "pg://wh/raw.orders": ("openlineage", True),
        "pg://wh/mart.orders": ("openlineage", True),
        "etl/load": ("openlineage", True),
    }
    # The stamp attribute is the hook's business only: with the hook off, nothing writes it.
    stamped = (await by_name(client, tenant, "pg://wh/by_api"))["attributes"].get("lily.source")
    assert stamped == ("api" if settings.hooks == "*" else None)


async def test_the_version_history_records_the_source(client, tenant, app):
    first = await put(client, tenant, "pg://wh/history")
    await openlineage_run(client, tenant, [], ["history"])
    await wait_idle(app, tenant)
    r = await client.get(f"/metadata/{first['asset_id']}", headers=tenant.headers("viewer"))
    doc = r.json()
    assert (doc["source"], doc["has_active_source"]) == ("openlineage", True)
    newest, oldest = doc["history"]["items"][0], doc["history"]["items"][-1]
    assert (oldest["snapshot"]["source"], oldest["snapshot"]["has_active_source"]) == ("api", False)
    assert newest["snapshot"]["source"] == "openlineage"
    assert newest["changes"]["has_active_source"] == {"from": False, "to": True}

    # An edit through the API afterwards: "api" wrote it last, but OpenLineage still feeds it.
    edited = await put(client, tenant, "pg://wh/history", description="hand-written note")
    assert (edited["source"], edited["has_active_source"]) == ("api", True)


async def test_propagation_skips_assets_fed_by_openlineage(client, tenant, app):
    await put(client, tenant, "pg://wh/upstream", attributes={"columns": [{"name": "id"}]})
    await put(client, tenant, "pg://wh/by_hand")
    await openlineage_run(client, tenant, [], ["fed"])
    await wait_idle(app, tenant)
    for down in ("pg://wh/by_hand", "pg://wh/fed", "pg://wh/named_only"):
        await link(client, tenant, "pg://wh/upstream", down)  # the last one becomes a placeholder
    placeholder = await by_name(client, tenant, "pg://wh/named_only")
    assert placeholder["placeholder"] and not placeholder["has_active_source"]

    await put(client, tenant, "pg://wh/upstream", attributes={"columns": [{"name": "id"}, {"name": "amount"}]})
    await wait_idle(app, tenant)

    def told(doc: dict[str, Any]) -> list[str]:
        return [
            v["origin"]["qualified_name"] for v in doc["history"]["items"] if v["action"] == "asset.upstream_changed"
        ]

    by_hand = await by_name(client, tenant, "pg://wh/by_hand")
    assert told(by_hand) == ["pg://wh/upstream"]
    assert (by_hand["source"], by_hand["has_active_source"]) == ("propagation", False)
    assert told(await by_name(client, tenant, "pg://wh/named_only")) == ["pg://wh/upstream"]
    fed = await by_name(client, tenant, "pg://wh/fed")
    assert told(fed) == [] and "lily.upstream_changed" not in fed["attributes"]
    assert (fed["source"], fed["has_active_source"]) == ("openlineage", True)


async def test_sources_stay_in_their_tenant(client, tenant, other_tenant, app):
    """The same name fed by OpenLineage in one tenant and written by hand in another: each tenant's
    asset has its own source, and propagation in one never reads the other's."""
    await openlineage_run(client, tenant, [], ["shared"])
    await put(client, other_tenant, "pg://wh/shared")
    await put(client, other_tenant, "pg://wh/up", attributes={"columns": [{"name": "a"}]})
    await link(client, other_tenant, "pg://wh/up", "pg://wh/shared")
    await put(client, other_tenant, "pg://wh/up", attributes={"columns": [{"name": "b"}]})
    await wait_idle(app, tenant)
    await wait_idle(app, other_tenant)
    mine = await by_name(client, tenant, "pg://wh/shared")
    theirs = await by_name(client, other_tenant, "pg://wh/shared")
    assert (mine["source"], mine["has_active_source"]) == ("openlineage", True)
    assert (theirs["source"], theirs["has_active_source"]) == ("propagation", False)
    assert mine["asset_id"] != theirs["asset_id"]
    assert [v["action"] for v in mine["history"]["items"]] == ["asset.created"]
