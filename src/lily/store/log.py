"""The event log in SQL: appending, claiming a partition, reading a batch, recording outcomes.

Ordering rests on one rule: an appender locks its partitions' ``log_heads`` rows (in partition order,
so appenders never deadlock) and holds them to commit. Sequence numbers of a partition therefore become
visible in order, and a consumer that reads ``seq > applied_seq`` can never skip a late commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb

from lily.domain.access import Caller
from lily.domain.events import Accepted, NewEvent, partition_of
from lily.store.db import PIPELINE_ROLE, Conn, caller_arguments, insert_rows

LOG_CHANNEL = "lily_log"
APPLIED_CHANNEL = "lily_applied"

_EVENT_COLUMNS = (
    "event_id",
    "partition",
    "seq",
    "tenant_id",
    "subject",
    "kind",
    "payload",
    "actor",
    "request_id",
    "source",
    "bulk_job_id",
    "item_index",
)


async def append(conn: Conn, events: Sequence[NewEvent], partitions: int) -> list[Accepted]:
    """Append ``events`` in the caller's transaction; they become visible to workers at its commit."""
    if not events:
        return []
    parts = [partition_of(e.tenant_id, e.subject, partitions) for e in events]
    counts = sorted(Counter(parts).items())
    if len(counts) > 1:
        await conn.execute(
            "SELECT 1 FROM log_heads WHERE partition = ANY(%s) ORDER BY partition FOR UPDATE",
            [[p for p, _ in counts]],
        )
    cur = await conn.execute(
        "UPDATE log_heads h SET next_seq = h.next_seq + c.n"
        " FROM unnest(%s::int[], %s::bigint[]) AS c(p, n) WHERE h.partition = c.p"
        " RETURNING h.partition, h.next_seq - c.n AS first_seq",
        [[p for p, _ in counts], [n for _, n in counts]],
    )
    next_seq = {row["partition"]: row["first_seq"] for row in await cur.fetchall()}
    accepted = []
    rows = []
    for event, part in zip(events, parts, strict=True):
        seq = next_seq[part]
        next_seq[part] = seq + 1
        accepted.append(Accepted(event.event_id, part, seq))
        rows.append(
            (
                event.event_id,
                part,
                seq,
                event.tenant_id,
                event.subject,
                event.kind,
                event.payload,
                event.actor,
                event.request_id,
                event.source,
                event.bulk_job_id,
                event.item_index,
            )
        )
    await _insert_events(conn, rows)
    # In the transaction: one notification (and one hold of PostgreSQL's notify lock) for the whole batch.
    await conn.execute("SELECT pg_notify(%s, %s)", [LOG_CHANNEL, ",".join(str(p) for p, _ in counts)])
    return accepted


async def wake_workers(conn: Conn, partitions: Sequence[int]) -> None:
    """Tell the workers that ``partitions`` have new events, after the appends committed (one statement,
    outside any transaction, not flushed to disk: a wake-up needs no durability; lily.pipeline.wake)."""
    await conn.execute(
        "SELECT set_config('synchronous_commit', 'off', true), pg_notify(%s, %s)",
        [LOG_CHANNEL, ",".join(map(str, partitions))],
    )


async def append_alone(conn: Conn, event: NewEvent, partitions: int) -> Accepted:
    """Append one event in its own transaction, in one round trip. ``conn`` must be in autocommit and
    outside any transaction (the function sets the tenant for its own call only). It does not wake the
    workers: the caller does, after it returns (:func:`wake_workers`; migration 0024 says why)."""
    accepted = await _append_one(conn, "lily_append_event", [], event, partitions)
    assert accepted is not None
    return accepted


async def append_checked(
    conn: Conn, event: NewEvent, partitions: int, *, auth_epoch: int, policy_epoch: int
) -> Accepted | None:
    """:func:`append_alone`, but only while the tenant's auth and policy epochs are still these (the ones
    the caller was checked at); None, with nothing appended, once either moved (``lily_append_checked``)."""
    return await _append_one(conn, "lily_append_checked", [auth_epoch, policy_epoch], event, partitions)


async def _append_one(
    conn: Conn, function: str, leading: list[Any], event: NewEvent, partitions: int
) -> Accepted | None:
    """Call one of the SQL functions that append a single event: ``leading`` arguments, then the event's."""
    partition = partition_of(event.tenant_id, event.subject, partitions)
    args = [
        *leading,
        event.event_id,
        partition,
        event.tenant_id,
        event.subject,
        event.kind,
        Jsonb(event.payload),
        event.actor,
        event.request_id,
        event.source,
    ]
    placeholders = ", ".join(["%s"] * len(args))
    cur = await conn.execute(f"SELECT {function}({placeholders}) AS seq", args)
    row = await cur.fetchone()
    assert row is not None
    return None if row["seq"] is None else Accepted(event.event_id, partition, int(row["seq"]))


async def _insert_events(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    await insert_rows(
        conn,
        "events",
        _EVENT_COLUMNS,
        ("uuid", "int4", "int8", "text", "text", "text", "jsonb", "text", "text", "text", "uuid", "int4"),
        rows,
    )


# -- consumer side -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed partition's offset and side state (see migration 0004)."""

    applied_seq: int
    retry_at: datetime | None  # the earliest retry of a parked subject; None if none is parked
    due: bool  # retry_at has come (by the database's clock, as partitions_with_backlog sees it)
    lanes: int  # open tenant lanes

    @property
    def clean(self) -> bool:
        """Nothing held: the batch needs no look at parked subjects or lanes (the common case)."""
        return self.retry_at is None and self.lanes == 0


async def partitions_with_backlog(conn: Conn) -> dict[int, bool]:
    """Partitions with work: each mapped to whether it has side work due (a parked subject's retry
    time has come, or a lane to drain), which a worker does for that partition alone."""
    cur = await conn.execute(
        "SELECT h.partition, (o.lanes > 0 OR o.retry_at <= now()) AS side"
        " FROM log_heads h JOIN log_offsets o USING (partition)"
        " WHERE h.next_seq - 1 > o.applied_seq OR o.lanes > 0 OR o.retry_at <= now()"
    )
    return {row["partition"]: bool(row["side"]) for row in await cur.fetchall()}


_CLAIMED = "SELECT partition, applied_seq, retry_at, coalesce(retry_at <= now(), false) AS due, lanes FROM log_offsets"


def _claimed(row: dict[str, Any]) -> Claimed:
    return Claimed(int(row["applied_seq"]), row["retry_at"], bool(row["due"]), int(row["lanes"]))


async def try_claim(conn: Conn, partition: int) -> Claimed | None:
    """Lock ``partition`` for this transaction; its offset and side state, or None if another worker
    has it.

    The offset is read in a second statement, after the lock is held. Read in the same statement it
    would come from that statement's snapshot, taken *before* the lock: a worker that committed and
    released the lock in between would leave us its old offset, and we would apply its batch again.
    """
    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s) AS locked", [_PARTITION_LOCK, partition])
    row = await cur.fetchone()
    if row is None or not row["locked"]:
        return None
    cur = await conn.execute(f"{_CLAIMED} WHERE partition = %s", [partition])
    row = await cur.fetchone()
    return None if row is None else _claimed(row)


_PARTITION_LOCK = 0x4C4F47  # "LOG": the advisory lock namespace for partitions


@dataclass(frozen=True, slots=True)
class Held:
    """What a claimed partition holds: its parked subjects and its lanes (tenant → next seq)."""

    parked: set[tuple[str, str]]
    lanes: dict[str, int]


async def claim_for_apply(conn: Conn, partition: int) -> tuple[Claimed, Held] | None:
    """:func:`try_claim` for a worker about to apply: also becomes the pipeline role (committing
    without waiting for the WAL flush, as :func:`lily.store.db.as_pipeline_relaxed` explains) and
    reads what the partition holds, all in two round trips. None if another worker has it."""
    cur = await conn.execute(
        sql.SQL(
            "SET LOCAL ROLE {role}; SET LOCAL synchronous_commit = off;"
            " SELECT pg_try_advisory_xact_lock({ns}, {p}) AS locked"
        ).format(role=sql.Identifier(PIPELINE_ROLE), ns=sql.Literal(_PARTITION_LOCK), p=sql.Literal(partition))
    )
    while cur.description is None or cur.description[0].name != "locked":
        if not cur.nextset():
            return None
    row = await cur.fetchone()
    if row is None or not row["locked"]:
        return None
    cur = await conn.execute(
        "SELECT o.partition, o.applied_seq, o.retry_at, coalesce(o.retry_at <= now(), false) AS due, o.lanes,"
        " CASE WHEN o.retry_at IS NULL THEN '{}' ELSE ARRAY(SELECT ARRAY[p.tenant_id, p.subject]"
        "  FROM parked_subjects p WHERE p.partition = o.partition) END AS parked,"
        " CASE WHEN o.lanes = 0 THEN '{}' ELSE ARRAY(SELECT ARRAY[l.tenant_id, l.next_seq::text]"
        "  FROM tenant_lanes l WHERE l.partition = o.partition) END AS lane_list"
        " FROM log_offsets o WHERE o.partition = %s",
        [partition],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    held = Held({(t, s) for t, s in row["parked"]}, {t: int(n) for t, n in row["lane_list"]})
    return _claimed(row), held


async def try_claim_many(conn: Conn, partitions: Sequence[int]) -> dict[int, Claimed]:
    """Lock whichever of ``partitions`` no other worker holds; their offsets and side state.

    As in :func:`try_claim`, the offsets are read by a second statement, after the locks are held.
    """
    cur = await conn.execute(
        "SELECT p FROM unnest(%s::int[]) AS p WHERE pg_try_advisory_xact_lock(%s, p)",
        [list(partitions), _PARTITION_LOCK],
    )
    locked = [row["p"] for row in await cur.fetchall()]
    if not locked:
        return {}
    cur = await conn.execute(f"{_CLAIMED} WHERE partition = ANY(%s)", [locked])
    return {row["partition"]: _claimed(row) for row in await cur.fetchall()}


async def read_batches(conn: Conn, offsets: dict[int, int], per_partition: int) -> list[dict[str, Any]]:
    """The next events of several partitions, each partition's in order. Must run as the pipeline role."""
    cur = await conn.execute(
        "SELECT e.* FROM unnest(%s::int[], %s::bigint[]) AS o(p, s) CROSS JOIN LATERAL ("
        " SELECT event_id, partition, seq, tenant_id, subject, kind, payload, actor, request_id,"
        " source, bulk_job_id, item_index, attempts, accepted_at"
        " FROM events WHERE partition = o.p AND seq > o.s ORDER BY seq LIMIT %s) e",
        [list(offsets), list(offsets.values()), per_partition],
    )
    return await cur.fetchall()


_SELECT_EVENT = (
    "SELECT event_id, partition, seq, tenant_id, subject, kind, payload, actor, request_id,"
    " source, bulk_job_id, item_index, attempts, accepted_at FROM events"
)


async def read_batch(conn: Conn, partition: int, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """The next events of a partition, in order. Must run under the pipeline role."""
    return await read_batches(conn, {partition: after_seq}, limit)


async def read_past_lanes(
    conn: Conn, partition: int, after_seq: int, lanes: Sequence[str], limit: int
) -> tuple[list[dict[str, Any]], int, list[int]]:
    """The next events of a partition that are not in a lane of ``lanes``, how far the read got, and
    the seqs it passed that stay in their tenants' lanes (held).

    How far: the last row's seq when ``limit`` rows came back, else the partition's last visible seq,
    read by the same statement (so from the same snapshot: seqs become visible in order, and nothing at
    or below it can appear later).
    """
    cur = await conn.execute(
        "SELECT t.top, t.held, e.* FROM (SELECT coalesce(max(seq), %(s)s) AS top FROM events WHERE partition = %(p)s) m"
        " CROSS JOIN LATERAL (SELECT m.top, (SELECT coalesce(array_agg(seq ORDER BY seq), '{}') FROM events"
        "  WHERE partition = %(p)s AND seq > %(s)s AND seq <= m.top AND tenant_id = ANY(%(lanes)s)) AS held) t"
        " LEFT JOIN LATERAL ("
        f" {_SELECT_EVENT} WHERE partition = %(p)s AND seq > %(s)s AND seq <= m.top"
        " AND tenant_id <> ALL(%(lanes)s) ORDER BY seq LIMIT %(n)s) e ON true",
        {"p": partition, "s": after_seq, "lanes": list(lanes), "n": limit},
    )
    rows = await cur.fetchall()
    if not rows:
        return [], after_seq, []
    top, held = int(rows[0]["top"]), [int(x) for x in rows[0]["held"]]
    events = [{k: v for k, v in row.items() if k not in ("top", "held")} for row in rows if row["event_id"] is not None]
    if len(events) == limit:
        top = int(events[-1]["seq"])
        held = [x for x in held if x <= top]  # those past it stay ahead of the offset
    return events, max(top, after_seq), held


async def others_waiting(conn: Conn, candidates: dict[int, tuple[str, int]]) -> dict[int, int | None]:
    """For ``candidates`` (partition → (tenant, seq)): whether an event of another tenant follows
    ``seq`` — None if one does, else the partition's last visible seq, read by the same statement, so
    every event up to it is known to be the tenant's and a later look may start there. The walk stops
    at the first other tenant's event, so it costs at most the tenant's own backlog."""
    cur = await conn.execute(
        "SELECT c.p, EXISTS (SELECT 1 FROM events e WHERE e.partition = c.p AND e.seq > c.s AND e.tenant_id <> c.t)"
        " AS waiting, (SELECT max(seq) FROM events e WHERE e.partition = c.p) AS top"
        " FROM unnest(%s::int[], %s::text[], %s::bigint[]) AS c(p, t, s)",
        [list(candidates), [t for t, _ in candidates.values()], [s for _, s in candidates.values()]],
    )
    return {int(row["p"]): None if row["waiting"] else int(row["top"] or 0) for row in await cur.fetchall()}


async def anyone_waiting(conn: Conn) -> bool:
    """Whether any partition has an event past its offset that no lane holds: someone's ordinary
    write waiting for the next pass. Walks only what arrived since the offsets last moved."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM log_offsets o JOIN log_heads h USING (partition)"
        " CROSS JOIN LATERAL (SELECT 1 FROM events e WHERE e.partition = o.partition AND e.seq > o.applied_seq"
        "  AND NOT EXISTS (SELECT 1 FROM tenant_lanes l WHERE l.partition = e.partition AND l.tenant_id = e.tenant_id)"
        "  LIMIT 1) x WHERE h.next_seq - 1 > o.applied_seq) AS waiting"
    )
    row = await cur.fetchone()
    return bool(row and row["waiting"])


async def read_events(conn: Conn, event_ids: Sequence[UUID]) -> list[dict[str, Any]]:
    """Events by id, fresh from the log, in log order (a failed attempt may have changed the copies
    in hand). Must run under the pipeline role."""
    cur = await conn.execute(f"{_SELECT_EVENT} WHERE event_id = ANY(%s) ORDER BY partition, seq", [list(event_ids)])
    return await cur.fetchall()


async def record_outcomes(
    conn: Conn, event_ids: list[UUID], statuses: list[str], results: list[Any], errors: list[str | None]
) -> None:
    """Mark a batch's events applied or failed. Must run under the pipeline role."""
    await conn.execute(
        "UPDATE events e SET status = r.status, result = r.result, error = r.error,"
        " applied_at = clock_timestamp(), attempts = e.attempts + 1"
        " FROM unnest(%b::uuid[], %b::text[], %b::jsonb[], %b::text[]) AS r(event_id, status, result, error)"
        " WHERE e.event_id = r.event_id",
        [event_ids, statuses, [Jsonb(r) if r is not None else None for r in results], errors],
    )


async def advance_many(conn: Conn, last_seq: dict[int, int]) -> None:
    """Move several clean partitions' offsets at once and tell waiting writers (``lily_applied``)."""
    await conn.execute(
        "UPDATE log_offsets o SET applied_seq = v.s"
        " FROM unnest(%s::int[], %s::bigint[]) AS v(p, s) WHERE o.partition = v.p",
        [list(last_seq), list(last_seq.values())],
    )
    await notify_applied(conn, last_seq)


async def finish_partition(
    conn: Conn,
    partition: int,
    seq: int,
    *,
    held: Sequence[int] = (),
    released: Sequence[int] = (),
    side_changed: bool = False,
) -> None:
    """Move a partition's offset to ``seq`` with ``held`` events of it left behind undecided and
    ``released`` ones (held before) now decided; recount its side state if it changed. Must run under
    the pipeline role, in the transaction that applied the batch."""
    side = (
        ", retry_at = (SELECT min(retry_at) FROM parked_subjects WHERE partition = %(p)s),"
        " lanes = (SELECT count(*) FROM tenant_lanes WHERE partition = %(p)s)"
        if side_changed
        else ""
    )
    # The offset's update and its notifications in one round trip.
    await conn.execute(
        "WITH u AS (UPDATE log_offsets SET applied_seq = greatest(applied_seq, %(s)s), held = held + %(d)s"
        f"{side} WHERE partition = %(p)s) SELECT pg_notify(%(ch)s, x) FROM unnest(%(notes)s::text[]) AS x",
        {
            "p": partition,
            "s": seq,
            "d": len(held) - len(released),
            "ch": APPLIED_CHANNEL,
            "notes": _notes({partition: seq}, [(partition, h) for h in held], [(partition, r) for r in released]),
        },
    )


async def notify_applied(
    conn: Conn,
    last_seq: dict[int, int],
    *,
    held: Sequence[tuple[int, int]] = (),
    released: Sequence[tuple[int, int]] = (),
) -> None:
    """Tell waiting writers (``lily_applied``) about offsets, held and released events (:func:`_notes`)."""
    payloads = _notes(last_seq, held, released)
    if len(payloads) == 1:
        await conn.execute("SELECT pg_notify(%s, %s)", [APPLIED_CHANNEL, payloads[0]])
    else:  # one round trip however many: unnest yields (and pg_notify sends) them in order
        await conn.execute("SELECT pg_notify(%s, x) FROM unnest(%s::text[]) AS u(x)", [APPLIED_CHANNEL, payloads])


def _notes(last_seq: dict[int, int], held: Sequence[tuple[int, int]], released: Sequence[tuple[int, int]]) -> list[str]:
    """Payloads "p:seq,…" for offsets, "p:seq?" for an event held behind its offset, "p:seq!" for a held
    event now decided. Held notes go first: a waiter must know an event is held before the offset
    passes it. NOTIFY payloads stop at 8000 bytes, so long lists go in several, in order."""
    notes = [f"{p}:{s}?" for p, s in held] + [f"{p}:{s}!" for p, s in released]
    notes += [f"{p}:{s}" for p, s in last_seq.items()]
    return [",".join(notes[i : i + 300]) for i in range(0, len(notes), 300)]


def parse_applied(payload: str) -> list[tuple[int, int, str]]:
    """The (partition, seq, mark) notes of a ``lily_applied`` notification; mark "" (offset), "?"
    (held) or "!" (released)."""
    out = []
    for note in payload.split(","):
        partition, _, seq = note.partition(":")
        mark = seq[-1] if seq[-1:] in ("?", "!") else ""
        out.append((int(partition), int(seq[: len(seq) - len(mark)]), mark))
    return out


async def record_retry(conn: Conn, event_id: UUID, error: str) -> None:
    """Count a failed attempt of a parked subject's head event."""
    await conn.execute("UPDATE events SET attempts = attempts + 1, error = %s WHERE event_id = %s", [error, event_id])


async def dead_letter(
    conn: Conn,
    *,
    event_id: UUID,
    tenant_id: str,
    partition: int,
    seq: int,
    subject: str,
    kind: str,
    attempts: int,
    error: str,
) -> None:
    """Give up on an event: mark it and queue it for an admin (the caller moves the offset on).

    ``attempts`` counts this last one. Must run under the pipeline role.
    """
    await conn.execute(
        "UPDATE events SET status = 'dead_lettered', attempts = %s, error = %s,"
        " applied_at = clock_timestamp() WHERE event_id = %s",
        [attempts, error, event_id],
    )
    await conn.execute(
        "INSERT INTO dead_letters (tenant_id, event_id, partition, seq, subject, kind, error, attempts)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [tenant_id, event_id, partition, seq, subject, kind, error, attempts],
    )


# -- parked subjects and tenant lanes (migration 0004); all under the pipeline role ----------------


async def park(conn: Conn, partition: int, tenant_id: str, subject: str, retry_at: datetime) -> None:
    """Hold ``subject`` (with its queue) until ``retry_at``; a parked one just gets the new time."""
    await conn.execute(
        "INSERT INTO parked_subjects (tenant_id, subject, partition, retry_at) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (tenant_id, subject) DO UPDATE SET retry_at = excluded.retry_at",
        [tenant_id, subject, partition, retry_at],
    )


async def unpark(conn: Conn, tenant_id: str, subject: str) -> None:
    await conn.execute("DELETE FROM parked_subjects WHERE tenant_id = %s AND subject = %s", [tenant_id, subject])


async def parked_in(conn: Conn, partition: int) -> set[tuple[str, str]]:
    """The (tenant, subject) pairs parked in ``partition``."""
    cur = await conn.execute("SELECT tenant_id, subject FROM parked_subjects WHERE partition = %s", [partition])
    return {(row["tenant_id"], row["subject"]) for row in await cur.fetchall()}


async def due_parked(conn: Conn, partition: int, limit: int) -> list[dict[str, Any]]:
    """Parked subjects of ``partition`` whose retry time has come, longest due first."""
    cur = await conn.execute(
        "SELECT tenant_id, subject FROM parked_subjects WHERE partition = %s AND retry_at <= now()"
        " ORDER BY retry_at LIMIT %s",
        [partition, limit],
    )
    return await cur.fetchall()


async def parked_queue(conn: Conn, tenant_id: str, subject: str, up_to_seq: int, limit: int) -> list[dict[str, Any]]:
    """A parked subject's held events, in order: its undecided events at or below the offset."""
    cur = await conn.execute(
        f"{_SELECT_EVENT} WHERE tenant_id = %s AND subject = %s AND seq <= %s AND status = 'accepted'"
        " ORDER BY seq LIMIT %s",
        [tenant_id, subject, up_to_seq, limit],
    )
    return await cur.fetchall()


async def open_lane(conn: Conn, partition: int, tenant_id: str, next_seq: int) -> None:
    """Open a tenant's lane from ``next_seq``, or widen an open one back to it: every undecided event
    of the tenant at or below the offset is held, so the lane may start at any of them."""
    await conn.execute(
        "INSERT INTO tenant_lanes (partition, tenant_id, next_seq) VALUES (%s, %s, %s)"
        " ON CONFLICT (partition, tenant_id) DO UPDATE SET next_seq = least(tenant_lanes.next_seq, excluded.next_seq)",
        [partition, tenant_id, next_seq],
    )


async def lanes_in(conn: Conn, partition: int) -> dict[str, int]:
    """Open lanes of ``partition``: tenant → the lane's next seq."""
    cur = await conn.execute("SELECT tenant_id, next_seq FROM tenant_lanes WHERE partition = %s", [partition])
    return {row["tenant_id"]: int(row["next_seq"]) for row in await cur.fetchall()}


async def lane_events(
    conn: Conn, partition: int, tenant_id: str, from_seq: int, up_to_seq: int, limit: int
) -> list[dict[str, Any]]:
    """A lane's next undecided events, in order (events of its parked subjects among them)."""
    cur = await conn.execute(
        f"{_SELECT_EVENT} WHERE partition = %s AND seq >= %s AND seq <= %s AND tenant_id = %s"
        " AND status = 'accepted' ORDER BY seq LIMIT %s",
        [partition, from_seq, up_to_seq, tenant_id, limit],
    )
    return await cur.fetchall()


async def move_lane(conn: Conn, partition: int, tenant_id: str, next_seq: int | None) -> None:
    """Set a lane's next seq, or close it (None)."""
    if next_seq is None:
        await conn.execute("DELETE FROM tenant_lanes WHERE partition = %s AND tenant_id = %s", [partition, tenant_id])
    else:
        await conn.execute(
            "UPDATE tenant_lanes SET next_seq = %s WHERE partition = %s AND tenant_id = %s",
            [next_seq, partition, tenant_id],
        )


async def applied_offsets(conn: Conn, partitions: Sequence[int]) -> dict[int, int]:
    cur = await conn.execute(
        "SELECT partition, applied_seq FROM log_offsets WHERE partition = ANY(%s)", [list(partitions)]
    )
    return {row["partition"]: int(row["applied_seq"]) for row in await cur.fetchall()}


async def applied_state(conn: Conn, partition: int, seq: int) -> tuple[int, bool]:
    """``partition``'s offset, and whether its event ``seq`` is held (passed but undecided).

    One round trip outside a transaction: the pipeline role is needed to see the event, whatever its
    tenant, and is set for this transaction only."""
    cur = await conn.execute(
        sql.SQL(
            "BEGIN; SET LOCAL ROLE lily_pipeline;"
            " SELECT o.applied_seq, (o.held > 0 AND o.applied_seq >= {s} AND EXISTS ("
            "  SELECT 1 FROM events e WHERE e.partition = {p} AND e.seq = {s} AND e.status = 'accepted')) AS held"
            " FROM log_offsets o WHERE o.partition = {p}; COMMIT"
        ).format(p=sql.Literal(partition), s=sql.Literal(seq))
    )
    # Results of a multi-statement query: BEGIN, SET, the SELECT, COMMIT.
    while cur.description is None or "held" not in [c.name for c in cur.description]:
        if not cur.nextset():
            return 0, False
    row = await cur.fetchone()
    return (int(row["applied_seq"]), bool(row["held"])) if row else (0, False)


async def lag(conn: Conn) -> list[dict[str, Any]]:
    """Per partition: events accepted but not yet decided (held ones included), and the earliest
    retry of a parked subject (None if none waits)."""
    cur = await conn.execute(
        "SELECT h.partition, h.next_seq - 1 - o.applied_seq + o.held AS lag, o.retry_at"
        " FROM log_heads h JOIN log_offsets o USING (partition) ORDER BY h.partition"
    )
    return await cur.fetchall()


async def open_dead_letters(conn: Conn) -> int:
    """Dead letters awaiting an admin, across tenants. Must run under the pipeline role."""
    cur = await conn.execute("SELECT count(*) AS n FROM dead_letters WHERE state = 'open'")
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def recent_latency(conn: Conn, per_partition: int = 200, window_seconds: float = 900) -> dict[str, Any]:
    """p50/p99 accept→apply seconds over each partition's latest applied events in the window.

    Walks the ``(partition, seq)`` index back from each applied offset, so it costs P small index scans
    however long the log grows. Must run under the pipeline role (it reads every tenant's events).
    """
    cur = await conn.execute(
        "SELECT count(*) AS n,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY x.s) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY x.s) AS p99"
        " FROM log_offsets o CROSS JOIN LATERAL ("
        "   SELECT extract(epoch FROM e.applied_at - e.accepted_at)::float8 AS s FROM events e"
        "   WHERE e.partition = o.partition AND e.seq <= o.applied_seq AND e.status = 'applied'"
        "   AND e.applied_at > now() - make_interval(secs => %s)"
        "   ORDER BY e.seq DESC LIMIT %s) x",
        [window_seconds, per_partition],
    )
    row = await cur.fetchone()
    n = int(row["n"]) if row else 0
    return {
        "events": n,
        "p50_seconds": row["p50"] if row and n else None,
        "p99_seconds": row["p99"] if row and n else None,
        "window_seconds": window_seconds,
    }


# -- reading events as a tenant ------------------------------------------------------------------


async def write_outcome(conn: Conn, tenant_id: str, caller: Caller | None, event_id: UUID) -> dict[str, Any] | None:
    """An event's status and result, with the asset version an applied one produced (``snapshot``; None
    for any other outcome), read as ``caller``: what a write of an asset answers, in one statement
    (``lily_write_outcome``, migrations 0022 and 0024). ``conn`` must be outside any transaction."""
    role, names = caller_arguments(caller)
    cur = await conn.execute(
        "SELECT status, result, snapshot FROM lily_write_outcome(%s, %s, %s, %s)", [tenant_id, role, names, event_id]
    )
    return await cur.fetchone()


async def get_event(conn: Conn, tenant_id: str, event_id: UUID) -> dict[str, Any] | None:
    """One event of ``tenant_id``'s, by id. Found by its id alone and its tenant checked on the row (row-level
    security binds the read too): with the tenant in the WHERE, the generic plan a prepared statement
    gets scanned the tenant's slice of ``events_subject`` when it was planned on a small table (0024)."""
    cur = await conn.execute(
        "SELECT tenant_id, event_id, partition, seq, subject, kind, status, attempts, error, result, source,"
        " accepted_at, applied_at, bulk_job_id, item_index, replay_of"
        " FROM events WHERE event_id = %s",
        [event_id],
    )
    row = await cur.fetchone()
    if row is None or row.pop("tenant_id") != tenant_id:
        return None
    return row
