"""Transient failures are retried with backoff; persistent ones are dead-lettered and the partition
moves on. Failures come from a real hook plugin (``tests/plugins/lily_test_hooks``) loaded through the
``lily.hooks`` entry-point group."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import psycopg

from lily.config import Settings
from lily.pipeline.worker import backoff
from lily.plugins import load_plugins

from .support import PLUGINS, hold_partition, settled, subjects_in_partition

ASYNC = {"Prefer": "respond-async"}


def asset(name: str, **attributes: Any) -> dict[str, Any]:
    return {"qualified_name": name, "type": "table", "attributes": attributes}


def test_plugin_is_found_through_entry_points(test_hooks: ModuleType, settings: Settings) -> None:
    hooks = load_plugins(settings.model_copy(update={"hooks": "*"})).hooks
    names = [h.name for h in hooks]
    assert names == ["source_stamp", "test_faults"]
    assert type(hooks[1]).__module__ == "lily_test_hooks"
    assert str(sys.modules["lily_test_hooks"].__file__).startswith(str(PLUGINS))
    only = load_plugins(settings.model_copy(update={"hooks": "source_stamp"})).hooks
    assert [h.name for h in only] == ["source_stamp"]


def test_backoff_grows_exponentially_with_jitter_and_a_cap(settings: Settings) -> None:
    s = settings.model_copy(update={"retry_base_seconds": 1.0, "retry_max_seconds": 10.0})
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)):
        delays = {backoff(attempt, s) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered: workers retrying together do not stampede


async def test_transient_failure_is_retried_then_applied(client: Any, tenant: Any, test_hooks: ModuleType) -> None:
    before = test_hooks.FaultHook.seen
    r = await client.post(
        "/metadata",
        json=asset("pg://db/s.flaky", **{"test.fail_attempts": 2}),
        headers=tenant.headers("editor", **ASYNC),
    )
    assert r.status_code == 202, r.text
    state = await settled(client, tenant.headers("viewer"), r.json()["event_id"])
    assert state["state"] == "applied", state
    assert state["attempts"] == 3  # two failures recorded, then the success
    assert state["result"]["version"] == 1
    # Two backoffs of at least base·2^(n-1)/2 each (0.005 s + 0.01 s) separate accept and apply.
    assert state["accept_to_apply_seconds"] >= 0.015
    assert test_hooks.FaultHook.seen > before


async def test_synchronous_write_waits_through_retries(client: Any, tenant: Any, test_hooks: ModuleType) -> None:
    r = await client.post(
        "/metadata", json=asset("pg://db/s.flaky_sync", **{"test.fail_attempts": 1}), headers=tenant.headers("editor")
    )
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1


async def test_persistent_failure_is_dead_lettered_and_the_partition_moves_on(
    client: Any, tenant: Any, settings: Settings, database_url: str, test_hooks: ModuleType
) -> None:
    bad, other = subjects_in_partition("acme", 3, settings.partitions, 2, "pg://db/s.p3_")
    headers = tenant.headers("editor", **ASYNC)
    # Queue, behind an event that always fails and in its partition: an event of another subject and
    # a later event of the same subject. Holding the partition makes the worker meet all three at once.
    async with hold_partition(database_url, 3):
        ids = []
        for body in (asset(bad, n=1, **{"test.fail_attempts": 99}), asset(other, n=1), asset(bad, n=2)):
            r = await client.post("/metadata", json=body, headers=headers)
            assert r.status_code == 202
            ids.append(r.json()["event_id"])
    viewer = tenant.headers("viewer")
    first = await settled(client, viewer, ids[0])
    assert first["state"] == "dead_lettered"
    assert first["attempts"] == settings.max_attempts == 3
    assert first["error"] == "InjectedFault: transient failure 3 of 99"
    assert first["dead_letter"] == {"state": "open", "replayed_as": None, "resolved_at": None}
    # The partition moved on: the other subject's event and the same subject's later one applied.
    assert (await settled(client, viewer, ids[1]))["state"] == "applied"
    later = await settled(client, viewer, ids[2])
    assert later["state"] == "applied" and later["attempts"] == 1
    assert later["result"]["version"] == 1  # nothing of the dead event was applied
    current = (await client.get(f"/metadata/{later['result']['asset_id']}", headers=viewer)).json()
    assert current["attributes"]["n"] == 2 and "test.fail_attempts" not in current["attributes"]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT retry_at FROM log_offsets WHERE partition = 3")
        assert (await cur.fetchone()) == (None,)
        cur = await conn.execute("SELECT event_id::text, attempts, state FROM dead_letters")
        assert (await cur.fetchall()) == [(ids[0], 3, "open")]


async def test_dead_lettered_synchronous_write_answers_503(client: Any, tenant: Any, test_hooks: ModuleType) -> None:
    test_hooks.BROKEN_SUBJECTS.add("pg://db/s.doomed")
    r = await client.post("/metadata", json=asset("pg://db/s.doomed"), headers=tenant.headers("editor"))
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"].endswith("/dead-lettered")
    state = (await client.get(f"/events/{problem['event_id']}", headers=tenant.headers("viewer"))).json()
    assert state["state"] == "dead_lettered" and state["attempts"] == 3
