"""``POST /metadata`` confirms a cached credential and reads the tenant's access policies in one round trip
(``lily.api.access.Writing``): a change made through another API process still applies to the very next
write, and the write is checked as the caller it is now."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from lily.store.db import Database

from .helpers import assert_problem


def body(name: str, **fields: Any) -> dict[str, Any]:
    return {"qualified_name": name, "type": "table", **fields}


async def test_a_cached_writer_makes_one_round_trip_for_its_credential_and_the_policies(
    second_app, second_process, tenant, monkeypatch
):
    headers = tenant.headers("editor")
    assert (await second_process.post("/metadata", json=body("pg://db/s/a"), headers=headers)).status_code == 201
    checkouts: list[list[str]] = []  # per checkout, the I/O psycopg waited for
    db: Database = second_app.state.runtime.db
    real = db._checkout

    @asynccontextmanager
    async def counted() -> AsyncIterator[Any]:
        waits: list[str] = []
        checkouts.append(waits)
        async with real() as conn:
            wait = conn.wait

            async def noted(gen: Any, *args: Any, **kwargs: Any) -> Any:
                waits.append(gen.__qualname__)
                return await wait(gen, *args, **kwargs)

            conn.wait = noted  # type: ignore[method-assign]
            try:
                yield conn
            finally:
                del conn.wait  # the pooled connection goes back as it was

    monkeypatch.setattr(db, "_checkout", counted)  # this process's pool only (the worker runs elsewhere)
    r = await second_process.post("/metadata", json=body("pg://db/s/b"), headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["qualified_name"] == "pg://db/s/b" and r.json()["version"] == 1
    # The credential with the policies, the append, the answer's read (the waiter's LISTEN heard the apply).
    assert len(checkouts) == 3, checkouts
    # Each pipeline is one round trip: nothing fetched before its Sync (a fetch inside the block forces
    # one of its own; the answer's read did two, outcome then version, before both went in one statement).
    for waits in (checkouts[0], checkouts[2]):
        assert waits[0] == "BasePipeline._enter_gen" and waits[-1] == "BasePipeline._exit_gen", waits
        assert "BasePipeline._fetch_gen" not in waits, waits


async def test_a_role_change_applies_to_the_next_write_in_another_process(client, second_process, tenant, database_url):
    headers = tenant.headers("editor")
    assert (await second_process.post("/metadata", json=body("pg://db/s/a"), headers=headers)).status_code == 201
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET role = 'viewer' WHERE tenant_id = %s AND name = 'editor-key'", [tenant.tenant_id]
        )
    assert_problem(await second_process.post("/metadata", json=body("pg://db/s/b"), headers=headers), 403)


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


async def test_a_viewer_is_refused_before_its_body_is_looked_at(second_process, tenant):
    r = await second_process.post("/metadata", json={"qualified_name": 5}, headers=tenant.headers("viewer"))
    assert_problem(r, 403)
    assert_problem(await second_process.post("/metadata", json=body("pg://db/s/a")), 401)
