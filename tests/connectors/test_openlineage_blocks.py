"""A job declares through OpenLineage what it stops from propagating (its ``lily`` facet), as a job
written through the API does with ``attributes["lily.blocks_propagation"]``."""

from __future__ import annotations

from typing import Any

from tests.api.helpers import assert_problem, fields_of
from tests.api.test_classification import classify, items, wait_idle

NS = "postgres://warehouse:5432"
JOB = {"namespace": "airflow", "name": "mask.contacts"}


def schema(*names: str) -> dict[str, Any]:
    return {"fields": [{"name": n, "type": "text"} for n in names]}


def event(lily: dict[str, Any] | None, *, with_datasets: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventType": "COMPLETE",
        "eventTime": "2026-12-01T10:00:00Z",
        "producer": "https://example.com/tests",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": "01930000-0000-7000-8000-000000000002"},
        "job": {**JOB, **({"facets": {"lily": lily}} if lily is not None else {})},
    }
    if with_datasets:
        lineage = {c: {"inputFields": [{"namespace": NS, "name": "dw.src", "field": c}]} for c in ("x", "y")}
        body["inputs"] = [{"namespace": NS, "name": "dw.src", "facets": {"schema": schema("x", "y")}}]
        body["outputs"] = [
            {
                "namespace": NS,
                "name": "dw.masked",
                "facets": {"schema": schema("x", "y"), "columnLineage": {"fields": lineage}},
            }
        ]
    return body


async def asset(client: Any, tenant: Any, qualified_name: str) -> dict[str, Any]:
    r = await client.get("/metadata/search", params={"qualified_name": qualified_name}, headers=tenant.headers())
    (found,) = r.json()["items"]
    return dict(found)


def names_at(found: list[dict[str, Any]], column: str) -> set[str]:
    # Columns named x and y: no built-in rule proposes anything for them, so what is there came by lineage.
    return {i["classification"] for i in found if i["column"] == column}


async def test_the_lily_job_facet_blocks_propagation_and_its_removal_lifts_it(client: Any, app: Any, tenant: Any):
    base = str(client.base_url.copy_with(path="")).rstrip("/")
    editor = tenant.headers("editor")
    r = await client.post(f"{base}/api/v1/lineage", json=event({"blocks_propagation": ["PII.*"]}), headers=editor)
    assert r.status_code == 201, r.text
    await wait_idle(app, tenant)
    job = await asset(client, tenant, "airflow/mask.contacts")
    assert job["attributes"]["lily.blocks_propagation"] == ["PII.*"]
    # The facet is also kept with the job's other facets, as it came.
    assert job["attributes"]["openlineage"]["facets"]["lily"] == {"blocks_propagation": ["PII.*"]}

    src, masked = [await asset(client, tenant, f"{NS}/dw.{n}") for n in ("src", "masked")]
    r = await classify(client, tenant, src["asset_id"], ["PII.Email", "Sensitivity.Internal"], column="x")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    assert names_at(await items(client, tenant, masked["asset_id"]), "x") == {"Sensitivity.Internal"}

    # An event of the same job without the facet keeps the block; one that deletes the facet lifts it,
    # and what it held back flows on.
    r = await client.post(f"{base}/api/v1/lineage", json=event(None), headers=editor)
    assert r.status_code == 201, r.text
    await wait_idle(app, tenant)
    assert (await asset(client, tenant, "airflow/mask.contacts"))["attributes"]["lily.blocks_propagation"] == ["PII.*"]
    lifted = event({"_deleted": True}, with_datasets=False)
    r = await client.post(f"{base}/api/v1/lineage", json=lifted, headers=editor)
    assert r.status_code == 201, r.text
    await wait_idle(app, tenant)
    assert (await asset(client, tenant, "airflow/mask.contacts"))["attributes"]["lily.blocks_propagation"] == []
    found = await items(client, tenant, masked["asset_id"])
    assert names_at(found, "x") == {"PII.Email", "Sensitivity.Internal"}


async def test_a_malformed_lily_facet_is_refused_naming_the_field(client: Any, app: Any, tenant: Any) -> None:
    base = str(client.base_url.copy_with(path="")).rstrip("/")
    for bad in ({"blocks_propagation": "PII.*"}, {"blocks_propagation": [5]}, {"blocks_propagation": [""]}):
        r = await client.post(f"{base}/api/v1/lineage", json=event(bad), headers=tenant.headers("editor"))
        problem = assert_problem(r, 422)
        assert any(f.startswith("job.facets.lily.blocks_propagation") for f in fields_of(problem)), problem
