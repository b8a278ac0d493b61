"""``POST /metadata`` from a cached writer (``lily.api.access.Writing``): judged on its cached credential and
the tenant's cached policies, and appended only while the epochs of both still hold; a change made through
another API process still applies to the very next write, which is checked as the caller it is now."""

from __future__ import annotations

from typing import Any

import psycopg

from lily.store import log as store_log
from lily.store.db import Database

from .helpers import assert_problem, count_round_trips


def body(name: str, **fields: Any) -> dict[str, Any]:
    return {"qualified_name": name, "type": "table", **fields}


async def test_a_cached_writer_makes_two_round_trips_of_one_statement(second_app, second_process, tenant, monkeypatch):
    headers = tenant.headers("editor")
    assert (await second_process.post("/metadata", json=body("pg://db/s/a"), headers=headers)).status_code == 201
    db: Database = second_app.state.runtime.db
    checkouts = count_round_trips(db, monkeypatch)  # this process's pool only (the worker runs elsewhere)
    wakes: list[list[int]] = []
    real_wake = store_log.wake_workers

    async def counted_wake(conn: Any, partitions: list[int]) -> None:
        wakes.append(list(partitions))
        await real_wake(conn, partitions)

    monkeypatch.setattr(store_log, "wake_workers", counted_wake)
    r = await second_process.post("/metadata", json=body("pg://db/s/b"), headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["qualified_name"] == "pg://db/s/b" and r.json()["version"] == 1
    # The append, checked against the epochs of the cached credential and the cached policies, and the
    # answer's read (the waiter's LISTEN heard the apply): two round trips of one statement each. Beside
    # them, off the request's path, the workers' wake-up (lily.pipeline.wake): one statement of its own.
    assert checkouts == [["BaseCursor._execute_gen"]] * 3, checkouts
    assert len(wakes) == 1 and len(wakes[0]) == 1, wakes


async def test_a_role_change_applies_to_the_next_write_in_another_process(client, second_process, tenant, database_url):
    headers = tenant.headers("editor")
    assert (await second_process.post("/metadata", json=body("pg://db/s/a"), headers=headers)).status_code == 201
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET role = 'viewer' WHERE tenant_id = %s AND name = 'editor-key'", [tenant.tenant_id]
        )
    assert_problem(await second_process.post("/metadata", json=body("pg://db/s/b"), headers=headers), 403)
    with psycopg.connect(database_url) as conn:  # the append at the old epoch did not happen
        assert conn.execute("SELECT count(*) FROM events WHERE subject = 'pg://db/s/b'").fetchone() == (0,)


async def test_a_deny_policy_made_elsewhere_applies_to_the_next_write(client, second_process, tenant):
    headers = tenant.headers("editor")
    assert (await second_process.post("/metadata", json=body("pg://db/s/a"), headers=headers)).status_code == 201
    policy = {
        "name": "no finance writes",
        "effect": "deny",
        "actions": ["write"],
        "principals": ["role:editor"],
        "resources": {"tags": ["finance"]},
    }
    assert (
        await client.post("/metadata/access-control", json=policy, headers=tenant.headers("steward"))
    ).status_code == 201
    refused = await second_process.post("/metadata", json=body("pg://db/s/b", tags=["finance"]), headers=headers)
    assert_problem(refused, 403)
    assert (await second_process.post("/metadata", json=body("pg://db/s/c"), headers=headers)).status_code == 201


async def test_a_deny_policy_removed_elsewhere_no_longer_refuses_the_next_write(client, second_process, tenant):
    headers = tenant.headers("editor")
    steward = tenant.headers("steward")
    policy = {
        "name": "no writes",
        "effect": "deny",
        "actions": ["write"],
        "principals": ["role:editor"],
        "resources": {"qualified_name_prefix": "pg://db/"},
    }
    made = await client.post("/metadata/access-control", json=policy, headers=steward)
    assert made.status_code == 201, made.text
    assert_problem(await second_process.post("/metadata", json=body("pg://db/s/a"), headers=headers), 403)
    removed = await client.delete(f"/metadata/access-control/policies/{made.json()['policy_id']}", headers=steward)
    assert removed.status_code in (200, 204), removed.text
    assert (await second_process.post("/metadata", json=body("pg://db/s/a"), headers=headers)).status_code == 201


async def test_a_keyed_write_from_a_cached_writer_is_checked_before_its_append(second_process, tenant, database_url):
    headers = tenant.headers("editor")
    assert (await second_process.post("/metadata", json=body("pg://db/s/a"), headers=headers)).status_code == 201
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET role = 'viewer' WHERE tenant_id = %s AND name = 'editor-key'", [tenant.tenant_id]
        )
    keyed = {**headers, "Idempotency-Key": "k-1"}
    assert_problem(await second_process.post("/metadata", json=body("pg://db/s/b"), headers=keyed), 403)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)


async def test_a_viewer_is_refused_before_its_body_is_looked_at(second_process, tenant):
    r = await second_process.post("/metadata", json={"qualified_name": 5}, headers=tenant.headers("viewer"))
    assert_problem(r, 403)
    assert_problem(await second_process.post("/metadata", json=body("pg://db/s/a")), 401)
