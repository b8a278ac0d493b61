"""Poison events: a permanent failure is dead-lettered at once; a transient one parks only its subject.

Permanent failures come from PostgreSQL itself: an asset ``type`` of 1,000 random 4-byte characters is
a valid jsonb payload (so the log accepts it) but makes a 4,000-byte ``assets_type`` index row, over
btree's 2,704-byte limit, so the apply fails with ``ProgramLimitExceeded`` on every attempt. The events
are appended straight to the log (``source`` api: the pipeline trusts the API validated them), as a
plugin, connector or old data could. Transient failures come from the test hook plugin
(``BROKEN_SUBJECTS``).
"""

from __future__ import annotations

import asyncio
import random
from types import ModuleType
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from lily.config import Settings
from lily.domain.events import ASSET_UPSERT, NewEvent
from lily.pipeline.failures import Transient, is_permanent
from lily.store import log as store_log

from .support import hold_partition, settled, subjects_in_partition, until

ASYNC = {"Prefer": "respond-async"}
TENANT = "acme"
PARTITION = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Patient retries: a broken subject stays parked (about 0.1 s between attempts) while the test
    # looks, instead of reaching its last attempt within a few tenths of a second.
    return settings.model_copy(update={"max_attempts": 500, "retry_base_seconds": 0.02, "retry_max_seconds": 0.1})


def poison_type(seed: int) -> str:
    rng = random.Random(seed)
    return "".join(chr(0x20000 + rng.randrange(40_000)) for _ in range(1000))


def upsert(subject: str, type_: str = "table", **attributes: Any) -> NewEvent:
    payload = {"qualified_name": subject, "type": type_, "attributes": attributes}
    return NewEvent(TENANT, subject, ASSET_UPSERT, payload, "test:loader")


async def append(app: Any, events: list[NewEvent]) -> list[str]:
    runtime = app.state.runtime
    async with runtime.db.tenant(events[0].tenant_id) as conn:
        accepted = await store_log.append(conn, events, runtime.settings.partitions)
    return [str(a.event_id) for a in accepted]


async def fetch(database_url: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def versions(database_url: str, subject: str) -> list[int]:
    rows = await fetch(
        database_url,
        "SELECT (v.snapshot->'attributes'->>'n')::int FROM asset_versions v JOIN assets a USING (tenant_id, asset_id)"
        " WHERE a.qualified_name = %s ORDER BY v.version",
        [subject],
    )
    return [n for (n,) in rows]


async def side_state(database_url: str) -> dict[str, Any]:
    (row,) = await fetch(database_url, "SELECT retry_at, held FROM log_offsets WHERE partition = %s", [PARTITION])
    parked = await fetch(database_url, "SELECT subject FROM parked_subjects ORDER BY subject")
    return {"retry_at": row[0], "held": row[1], "parked": [s for (s,) in parked]}


async def state_of(client: Any, tenant: Any, event_id: str) -> dict[str, Any]:
    r = await client.get(f"/events/{event_id}", headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


class _Remote(Exception):
    transient = True  # how a plugin marks its own exception class without importing Lily


class _Pydantic(BaseModel):
    n: int


def test_failures_are_classified_once_permanent_or_transient() -> None:
    try:
        _Pydantic.model_validate({"n": "x"})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        validation_error: BaseException = exc
    permanent = [
        psycopg.errors.ProgramLimitExceeded("index row size 4024 exceeds btree version 4 maximum 2704"),
        psycopg.errors.InvalidTextRepresentation("invalid input syntax for type uuid"),
        psycopg.errors.UntranslatableCharacter("\\u0000 cannot be converted to text"),
        psycopg.errors.StringDataRightTruncation("value too long"),
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.CheckViolation("violates check constraint"),
        psycopg.errors.FeatureNotSupported("not supported"),
        psycopg.DataError("data"),
        ValueError("bad payload"),
        TypeError("not a dict"),
        UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"),
        validation_error,
    ]
    transient = [
        psycopg.OperationalError("connection lost"),
        psycopg.errors.DeadlockDetected("deadlock"),
        psycopg.errors.SerializationFailure("could not serialize"),
        psycopg.errors.LockNotAvailable("lock timeout"),
        psycopg.errors.QueryCanceled("statement timeout"),
        psycopg.errors.AdminShutdown("terminating connection"),
        psycopg.InterfaceError("the connection is closed"),
        RuntimeError("a plugin's remote service is down"),
        ConnectionError("refused"),
        TimeoutError(),
        Transient("declared transient"),
        _Remote("declared by attribute"),
    ]

    class TransientValue(Transient, ValueError):
        """A plugin's declaration wins over the class it derives from."""

    transient.append(TransientValue("retry me"))
    assert [e for e in permanent if not is_permanent(e)] == []
    assert [e for e in transient if is_permanent(e)] == []


async def test_a_permanent_failure_is_dead_lettered_at_once_and_the_partition_moves_on(
    app: Any, client: Any, tenant: Any, settings: Settings, database_url: str
) -> None:
    bad, other = subjects_in_partition(TENANT, PARTITION, settings.partitions, 2, "pg://db/s.poison")
    async with hold_partition(database_url, PARTITION):
        ids = await append(app, [upsert(bad, poison_type(1), n=1), upsert(other, n=1), upsert(bad, n=2)])
    dead = await settled(client, tenant.headers("viewer"), ids[0])
    assert dead["state"] == "dead_lettered", dead
    assert dead["attempts"] == 1  # not retried: it would fail the same way every time
    assert dead["error"].startswith("ProgramLimitExceeded: index row size")
    assert dead["dead_letter"] == {"state": "open", "replayed_as": None, "resolved_at": None}
    assert (await settled(client, tenant.headers("viewer"), ids[1]))["state"] == "applied"
    later = await settled(client, tenant.headers("viewer"), ids[2])
    assert later["state"] == "applied" and later["attempts"] == 1 and later["result"]["version"] == 1
    assert await versions(database_url, bad) == [2]  # nothing of the poison event was applied
    assert await fetch(database_url, "SELECT event_id::text, attempts FROM dead_letters") == [(ids[0], 1)]
    assert await side_state(database_url) == {"retry_at": None, "held": 0, "parked": []}


async def test_a_transient_failure_parks_only_its_subject_while_its_partition_goes_on(
    app: Any, client: Any, tenant: Any, settings: Settings, database_url: str, test_hooks: ModuleType
) -> None:
    bad, other = subjects_in_partition(TENANT, PARTITION, settings.partitions, 2, "pg://db/s.parked")
    test_hooks.BROKEN_SUBJECTS.add(bad)
    async with hold_partition(database_url, PARTITION):
        ids = await append(app, [upsert(bad, n=1), upsert(other, n=1), upsert(bad, n=2)])
    # The other subject of the same partition is applied while the broken one waits.
    assert (await settled(client, tenant.headers("viewer"), ids[1]))["state"] == "applied"

    async def parked() -> dict[str, Any] | None:
        head = await state_of(client, tenant, ids[0])
        return head if head["attempts"] >= 2 else None  # retried, alone, at least once

    head = await until(parked, what="the broken subject to be retried")
    assert head["state"] == "accepted" and head["error"].startswith("InjectedFault:")
    waiting = await state_of(client, tenant, ids[2])
    assert waiting["state"] == "accepted" and waiting["attempts"] == 0  # held behind its head, not tried
    side = await side_state(database_url)
    assert side["parked"] == [bad] and side["retry_at"] is not None and side["held"] == 2
    (offset,) = await fetch(database_url, "SELECT applied_seq FROM log_offsets WHERE partition = %s", [PARTITION])
    (last,) = await fetch(database_url, "SELECT max(seq) FROM events WHERE partition = %s", [PARTITION])
    assert offset == last  # the offset moved past the held events
    async with app.state.runtime.db.system() as conn:
        lag = {r["partition"]: r["lag"] for r in await store_log.lag(conn)}
    assert lag[PARTITION] == 2  # held events still count as lag

    # Later events: the other subject's go straight through; the parked subject's join its queue.
    more = await append(app, [upsert(other, n=2), upsert(bad, n=3)])
    assert (await settled(client, tenant.headers("viewer"), more[0]))["state"] == "applied"
    assert (await state_of(client, tenant, more[1]))["state"] == "accepted"
    assert await versions(database_url, other) == [1, 2]
    assert await versions(database_url, bad) == []

    test_hooks.BROKEN_SUBJECTS.discard(bad)  # the outage is over: the queue is applied, in order
    for event_id in (ids[0], ids[2], more[1]):
        assert (await settled(client, tenant.headers("viewer"), event_id))["state"] == "applied"
    assert await versions(database_url, bad) == [1, 2, 3]
    assert await side_state(database_url) == {"retry_at": None, "held": 0, "parked": []}
    assert await fetch(database_url, "SELECT count(*) FROM dead_letters") == [(0,)]


async def test_a_synchronous_write_to_a_parked_subject_waits_for_its_turn(
    app: Any, client: Any, tenant: Any, database_url: str, test_hooks: ModuleType
) -> None:
    name = "pg://db/s.sync_parked"
    test_hooks.BROKEN_SUBJECTS.add(name)
    (first,) = await append(app, [upsert(name, n=1)])

    async def retried() -> bool:
        return (await state_of(client, tenant, first))["attempts"] >= 1

    await until(retried, what="the subject to be parked")
    body = {"qualified_name": name, "type": "table", "attributes": {"n": 2}}
    write = asyncio.create_task(client.post("/metadata", json=body, headers=tenant.headers("editor")))

    async def held() -> bool:
        # The write's event is accepted and the offset has moved past it, undecided.
        rows = await fetch(
            database_url,
            "SELECT count(*) FROM events e JOIN log_offsets o USING (partition)"
            " WHERE e.subject = %s AND e.status = 'accepted' AND e.seq <= o.applied_seq",
            [name],
        )
        return rows == [(2,)]

    await until(held, what="the write's event to be held behind the parked subject")
    assert not write.done()  # the offset passed it, but the waiter knows it is held
    test_hooks.BROKEN_SUBJECTS.discard(name)
    r = await asyncio.wait_for(write, timeout=15)
    assert r.status_code == 200, r.text  # applied (an update of version 1), not 202
    assert r.json()["version"] == 2
    assert await versions(database_url, name) == [1, 2]


async def test_a_forced_replay_waits_behind_its_parked_subject(
    app: Any, client: Any, tenant: Any, database_url: str, test_hooks: ModuleType
) -> None:
    name = "pg://db/s.replay_parked"
    (dead,) = await append(app, [upsert(name, poison_type(2), n=1)])
    assert (await settled(client, tenant.headers("viewer"), dead))["state"] == "dead_lettered"
    test_hooks.BROKEN_SUBJECTS.add(name)
    (parked,) = await append(app, [upsert(name, n=2)])

    async def retried() -> bool:
        return (await state_of(client, tenant, parked))["attempts"] >= 1

    await until(retried, what="the subject to be parked")
    admin = tenant.headers("admin")
    # A parked event is not a dead letter: it retries by itself.
    r = await client.post(f"/admin/dead-letters/{parked}/replay", headers=admin)
    assert r.status_code == 404, r.text
    # The dead one is older than the parked one: replaying would overwrite it, so it is refused…
    r = await client.post(f"/admin/dead-letters/{dead}/replay", headers=admin)
    assert r.status_code == 409, r.text
    assert r.json()["newer_event_id"] == parked
    # …unless forced; then the replay joins the subject's queue, behind the parked event.
    r = await client.post(f"/admin/dead-letters/{dead}/replay", headers=admin, params={"force": "true"})
    assert r.status_code == 202, r.text
    replay = r.json()["replay_event_id"]

    async def replay_held() -> bool:
        rows = await fetch(
            database_url,
            "SELECT e.status FROM events e JOIN log_offsets o USING (partition)"
            " WHERE e.event_id = %s AND e.seq <= o.applied_seq",
            [replay],
        )
        return rows == [("accepted",)]

    await until(replay_held, what="the replay to be held behind the parked subject")
    assert (await state_of(client, tenant, replay))["attempts"] == 0
    test_hooks.BROKEN_SUBJECTS.discard(name)
    first = await settled(client, tenant.headers("viewer"), parked)
    assert first["state"] == "applied" and first["result"]["version"] == 1
    again = await settled(client, tenant.headers("viewer"), replay)
    # The replay carries the poison payload: decided after the parked event, and dead at once.
    assert again["state"] == "dead_lettered" and again["attempts"] == 1 and again["replay_of"] == dead
    assert again["applied_at"] > first["applied_at"]
    assert await versions(database_url, name) == [2]
