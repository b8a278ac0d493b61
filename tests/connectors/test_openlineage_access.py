"""Access policies apply to OpenLineage writes as to every other write: one refused asset refuses the
event (or the whole batch) before anything is appended."""

from __future__ import annotations

from typing import Any

from tests.api.helpers import assert_problem

NS = "postgres://warehouse:5432"


def run_event(inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    return {
        "eventType": "COMPLETE",
        "eventTime": "2026-12-01T10:00:00Z",
        "producer": "https://example.com/tests",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": "01930000-0000-7000-8000-000000000001"},
        "job": {"namespace": "airflow", "name": "daily.totals"},
        "inputs": [{"namespace": NS, "name": n} for n in inputs],
        "outputs": [{"namespace": NS, "name": n} for n in outputs],
    }


async def appended(app: Any, tenant_id: str) -> int:
    async with app.state.runtime.db.tenant(tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM events")
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def test_a_denied_dataset_refuses_the_event_and_the_batch(client: Any, app: Any, tenant: Any) -> None:
    policy = {"name": "no writes to finance", "effect": "deny", "actions": ["write"], "principals": ["role:editor"],
              "resources": {"qualified_name_prefix": f"{NS}/dw.finance."}}  # fmt: skip
    r = await client.post("/metadata/access-control", json=policy, headers=tenant.headers("steward"))
    assert r.status_code == 201, r.text
    editor = tenant.headers("editor")
    base = str(client.base_url.copy_with(path="")).rstrip("/")
    denied = run_event(["dw.shop.orders"], ["dw.finance.totals"])
    r = await client.post(f"{base}/api/v1/lineage", json=denied, headers=editor)
    assert_problem(r, 403)
    allowed = run_event(["dw.shop.orders"], ["dw.shop.totals"])
    r = await client.post(f"{base}/api/v1/lineage/batch", json=[allowed, denied], headers=editor)
    assert_problem(r, 403)
    assert await appended(app, tenant.tenant_id) == 0
    r = await client.post(f"{base}/api/v1/lineage", json=allowed, headers=editor)
    assert r.status_code == 201, r.text
    assert await appended(app, tenant.tenant_id) > 0
    # The admin is never locked out.
    r = await client.post(f"{base}/api/v1/lineage", json=denied, headers=tenant.headers("admin"))
    assert r.status_code == 201, r.text
