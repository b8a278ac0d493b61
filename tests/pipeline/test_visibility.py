"""Visibility: detailed health (operator) reports lag, dead letters and accept→apply latency; /metrics
exports them (the tenant's gauges to its admin, process counters to the operator)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from pydantic import SecretStr

from lily.config import Settings
from lily.domain.events import partition_of

from .support import hold_partition, settled, until

ASYNC = {"Prefer": "respond-async"}
OPERATOR = {"Authorization": "Bearer visibility-operator-" + "v" * 32}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"operator_token": SecretStr(OPERATOR["Authorization"].removeprefix("Bearer "))})


async def health(client: Any) -> dict[str, Any]:
    r = await client.get("/system/health/details", headers=OPERATOR)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()["pipeline"]
    return body


def gauge(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    line = next(x for x in text.splitlines() if x.startswith(prefix))
    return float(line.split()[-1])


async def test_lag_rises_while_a_partition_is_held_and_drops_to_zero(client, tenant, database_url, settings):
    name = "pg://db/s.lag"
    partition = partition_of(tenant.tenant_id, name, settings.partitions)
    admin = tenant.headers("admin")
    async with hold_partition(database_url, partition):
        for n in range(3):
            r = await client.post(
                "/metadata",
                json={"qualified_name": name, "type": "table", "attributes": {"n": n}},
                headers=tenant.headers("editor", **ASYNC),
            )
            assert r.status_code == 202
        assert (await health(client))["lag"] == 3
        metrics = (await client.get("/metrics", headers=admin)).text
        assert gauge(metrics, "lily_log_backlog", f'partition="{partition}"') == 3
    last = r.json()["event_id"]
    await settled(client, tenant.headers("viewer"), last)

    async def drained() -> dict[str, Any] | None:
        h = await health(client)
        return h if h["lag"] == 0 else None

    h = await until(drained, what="lag 0")
    assert h["max_partition_lag"] == 0 and h["partitions"] == settings.partitions
    latency = h["accept_to_apply"]
    assert latency["events"] >= 3
    assert 0 <= latency["p50_seconds"] <= latency["p99_seconds"]
    metrics = (await client.get("/metrics", headers=admin)).text
    assert gauge(metrics, "lily_log_backlog", f'partition="{partition}"') == 0
    metrics = (await client.get("/metrics", headers=OPERATOR)).text  # process histograms: operators only
    assert gauge(metrics, "lily_event_accept_to_apply_seconds_count") >= 3


async def test_dead_letter_count_shows_in_health_and_metrics(client, tenant, test_hooks: ModuleType):
    admin = tenant.headers("admin")
    assert (await health(client))["dead_letters"] == 0
    test_hooks.BROKEN_SUBJECTS.add("pg://db/s.dead")
    r = await client.post(
        "/metadata",
        json={"qualified_name": "pg://db/s.dead", "type": "table"},
        headers=tenant.headers("editor", **ASYNC),
    )
    event_id = r.json()["event_id"]
    assert (await settled(client, tenant.headers("viewer"), event_id))["state"] == "dead_lettered"
    assert (await health(client))["dead_letters"] == 1
    metrics = (await client.get("/system/metrics", headers=admin)).text
    assert gauge(metrics, "lily_dead_letters_open") == 1
    metrics = (await client.get("/system/metrics", headers=OPERATOR)).text
    assert gauge(metrics, "lily_dead_letters_open") == 1
    assert gauge(metrics, "lily_events_dead_lettered_total") >= 1
    assert gauge(metrics, "lily_events_retried_total") >= 2
    # Discarding empties the queue, and the gauge follows.
    assert (await client.delete(f"/admin/dead-letters/{event_id}", headers=admin)).status_code == 204
    assert (await health(client))["dead_letters"] == 0
    assert gauge((await client.get("/metrics", headers=admin)).text, "lily_dead_letters_open") == 0
