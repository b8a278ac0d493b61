"""``/metrics``: a tenant admin sees its own figures only; the operator token sees every tenant and the
process; a standalone process serves the operator view on its own listener."""

from __future__ import annotations

import asyncio
import socket
from types import ModuleType
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lily.config import Settings
from lily.pipeline.metrics_listener import MetricsConfigError, check_config, serve_metrics
from tests.api.helpers import assert_problem
from tests.pipeline.support import hold_partition, settled, subjects_in_partition, until

from .conftest import OPERATOR_TOKEN, operator_headers

HELD = 3  # the partition the test keeps workers off, so its events stay in the backlog


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float | None:
    return parsed.get((name, tuple(sorted(labels.items()))))


async def dead_letter(client: Any, tenant: Any, hooks: ModuleType, name: str) -> None:
    hooks.BROKEN_SUBJECTS.add(name)
    r = await client.post(
        "/metadata",
        json={"qualified_name": name, "type": "table"},
        headers=tenant.headers("editor", Prefer="respond-async"),
    )
    assert r.status_code == 202, r.text
    state = await settled(client, tenant.headers("viewer"), r.json()["event_id"])
    assert state["state"] == "dead_lettered", state


async def backlog(client: Any, tenant: Any, settings: Settings, count: int) -> None:
    for name in subjects_in_partition(tenant.tenant_id, HELD, settings.partitions, count, "pg://db/s.waiting"):
        r = await client.post(
            "/metadata",
            json={"qualified_name": name, "type": "table"},
            headers=tenant.headers("editor", Prefer="respond-async"),
        )
        assert r.status_code == 202, r.text


async def test_a_tenant_admin_sees_only_its_tenant_and_the_operator_sees_all(
    client: Any, make_tenant: Any, settings: Settings, database_url: str, test_hooks: ModuleType
) -> None:
    acme, globex = await make_tenant("acme"), await make_tenant("globex")
    await dead_letter(client, acme, test_hooks, "pg://db/s.acme_dead")
    for i in range(2):
        await dead_letter(client, globex, test_hooks, f"pg://db/s.globex_dead{i}")
    async with hold_partition(database_url, HELD):
        await backlog(client, acme, settings, 2)
        await backlog(client, globex, settings, 5)

        acme_view = await client.get("/metrics", headers=acme.headers("admin"))
        assert acme_view.status_code == 200, acme_view.text
        assert acme_view.headers["content-type"].startswith("text/plain")
        mine = samples(acme_view.text)
        assert value(mine, "lily_log_backlog", partition=str(HELD)) == 2
        assert value(mine, "lily_dead_letters_open") == 1
        assert sum(v for (n, _), v in mine.items() if n == "lily_log_backlog") == 2
        # Nothing of the process (counters, histograms, runtime) nor of another tenant.
        assert {n for n, _ in mine} == {"lily_log_backlog", "lily_log_events_in_retry", "lily_dead_letters_open"}
        assert "globex" not in acme_view.text

        theirs = samples((await client.get("/system/metrics", headers=globex.headers("admin"))).text)
        assert value(theirs, "lily_log_backlog", partition=str(HELD)) == 5
        assert value(theirs, "lily_dead_letters_open") == 2

        every = await client.get("/metrics", headers=operator_headers())
        assert every.status_code == 200, every.text
        all_ = samples(every.text)
        assert value(all_, "lily_log_backlog", partition=str(HELD)) == 7
        assert value(all_, "lily_dead_letters_open") == 3
        assert value(all_, "lily_database_up") == 1
        assert value(all_, "lily_events_dead_lettered_total") is not None
        assert any(n.startswith("lily_event_accept_to_apply_seconds") for n, _ in all_)
        assert any(n.startswith("process_") or n.startswith("python_") for n, _ in all_)

    async def drained() -> bool:
        view = samples((await client.get("/metrics", headers=acme.headers("admin"))).text)
        return value(view, "lily_log_backlog", partition=str(HELD)) == 0

    await until(drained, what="the released partition to drain")


async def test_an_event_waiting_on_a_retry_counts_for_its_tenant(client: Any, tenant: Any) -> None:
    r = await client.post(
        "/metadata",
        json={"qualified_name": "pg://db/s.flaky", "type": "table", "attributes": {"test.fail_attempts": 1000}},
        headers=tenant.headers("editor", Prefer="respond-async"),
    )
    assert r.status_code == 202, r.text

    async def retrying() -> bool:
        view = samples((await client.get("/metrics", headers=tenant.headers("admin"))).text)
        total = sum(v for (n, _), v in view.items() if n == "lily_log_events_in_retry")
        waiting = sum(v for (n, _), v in view.items() if n == "lily_log_backlog")
        return total == 1 and waiting == 1

    await until(retrying, what="the failing event to be counted as waiting on a retry")


async def test_metrics_refuse_other_roles_and_strangers(client: Any, tenant: Any) -> None:
    for role in ("viewer", "editor", "steward"):
        assert_problem(await client.get("/metrics", headers=tenant.headers(role)), 403)
    assert_problem(await client.get("/metrics"), 401)
    assert_problem(await client.get("/metrics", headers={"Authorization": "Bearer guess"}), 401)
    assert_problem(await client.get("/metrics", headers={"Authorization": f"Bearer {OPERATOR_TOKEN[:-1]}"}), 401)


async def test_operator_metrics_still_answer_during_an_outage(
    client: Any, pg_admin_url: str, database_url: str, tenant: Any
) -> None:
    from .conftest import database_outage

    with database_outage(pg_admin_url, database_url):
        await client.get("/system/health")
        r = await client.get("/metrics", headers=operator_headers())
        assert r.status_code == 200
        assert value(samples(r.text), "lily_database_up") == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_standalone_process_serves_the_operator_view_on_its_own_port(settings: Settings, db: Any) -> None:
    port = free_port()
    configured = settings.model_copy(update={"metrics_port": port})
    stop = asyncio.Event()
    listener = asyncio.create_task(serve_metrics(configured, stop, db))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def up() -> httpx.Response | None:
                try:
                    return await http.get(url, headers=operator_headers())
                except httpx.TransportError:
                    return None

            r = await until(up, what="the metrics listener to answer")
            assert r.status_code == 200
            parsed = samples(r.text)
            assert value(parsed, "lily_database_up") == 1
            assert any(n.startswith("lily_event_accept_to_apply_seconds") for n, _ in parsed)
            assert (await http.get(url)).status_code == 401
            assert (await http.get(url, headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await http.get(url.replace("/metrics", "/other"), headers=operator_headers())).status_code == 404
    finally:
        stop.set()
        await asyncio.wait_for(listener, 5)
    assert listener.done() and listener.exception() is None


def test_a_metrics_port_without_an_operator_token_is_refused(settings: Settings) -> None:
    check_config(settings)  # no port: nothing to check
    with pytest.raises(MetricsConfigError, match="LILY_OPERATOR_TOKEN"):
        check_config(settings.model_copy(update={"metrics_port": 9999, "operator_token": None}))
