"""Replaying and discarding dead letters: the policy, over the SQL in :mod:`lily.store.dead_letters`.

A replay never revives the dead event in place (its old position in the log is behind the partition's
offset, and re-running it there would break per-subject order). It appends a *new* event with the same
kind, subject, payload, actor and source, marked ``replay_of``, so it is applied in log order after
everything already accepted. That is only right while the dead event is still the subject's latest
intent: if a newer event of the subject was accepted after it, replaying would overwrite the newer
state with the older one, so the replay is refused (409) unless the admin forces it. See README
"Dead letters and replay".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from lily.domain.errors import Conflict, NotFound
from lily.domain.events import NewEvent
from lily.store import audit
from lily.store import dead_letters as store
from lily.store import log as store_log
from lily.store.db import Conn


@dataclass(frozen=True, slots=True)
class Replayed:
    event_id: UUID  # the dead-lettered event
    replay_event_id: UUID  # the new event that carries it


async def replay(
    conn: Conn,
    tenant_id: str,
    event_id: UUID,
    *,
    force: bool,
    actor: str,
    request_id: str | None,
    partitions: int,
) -> Replayed:
    """Append a replay of one open letter, in the caller's transaction; raise if policy forbids it."""
    claimed = await store.claim_open(conn, tenant_id, event_id, "replayed", actor)
    if claimed is None:
        raise _not_open(await store.exists(conn, tenant_id, event_id), event_id)
    await store.lock_partition_head(conn, claimed["partition"])
    newer = await store.newer_event(conn, tenant_id, claimed["subject"], claimed["seq"])
    if newer is not None and not force:
        raise Conflict(
            f"a newer event of {claimed['subject']} was accepted after this one; replaying would"
            " overwrite it with older data (add ?force=true to replay anyway)",
            newer_event_id=str(newer["event_id"]),
        )
    letter = await store.get_letter(conn, tenant_id, event_id)
    assert letter is not None
    event = NewEvent(
        tenant_id,
        letter["subject"],
        letter["kind"],
        letter["payload"],
        letter["actor"],
        request_id,
        source=letter["source"],
    )
    (accepted,) = await store_log.append(conn, [event], partitions)
    await store.set_replayed_as(conn, tenant_id, event_id, accepted.event_id)
    await _audit(
        conn,
        tenant_id,
        "dead_letter.replayed",
        actor,
        request_id,
        event_id,
        {"replay_event_id": str(accepted.event_id), "forced": bool(force and newer)},
    )
    return Replayed(event_id, accepted.event_id)


async def replay_matching(
    conn: Conn,
    tenant_id: str,
    f: store.Filter,
    *,
    force: bool,
    actor: str,
    request_id: str | None,
    partitions: int,
    limit: int,
) -> tuple[list[Replayed], list[dict[str, Any]]]:
    """Replay every open letter matching ``f`` (up to ``limit``), in log order; refused ones are
    reported, not fatal. Each letter gets a savepoint so a refusal undoes only its own claim."""
    replayed: list[Replayed] = []
    skipped: list[dict[str, Any]] = []
    for event_id in await store.open_ids_in_log_order(conn, tenant_id, f, limit):
        try:
            async with conn.transaction():
                replayed.append(
                    await replay(
                        conn,
                        tenant_id,
                        event_id,
                        force=force,
                        actor=actor,
                        request_id=request_id,
                        partitions=partitions,
                    )
                )
        except (Conflict, NotFound) as err:
            skipped.append({"event_id": str(event_id), "reason": err.detail, **err.extra})
    return replayed, skipped


async def discard(conn: Conn, tenant_id: str, event_id: UUID, *, actor: str, request_id: str | None) -> None:
    """Drop an open letter from the queue; the event stays in the log as dead-lettered."""
    claimed = await store.claim_open(conn, tenant_id, event_id, "discarded", actor)
    if claimed is None:
        raise _not_open(await store.exists(conn, tenant_id, event_id), event_id)
    await _audit(conn, tenant_id, "dead_letter.discarded", actor, request_id, event_id, {})


def _not_open(exists: bool, event_id: UUID) -> Exception:
    if exists:
        return Conflict(f"dead letter {event_id} was already replayed or discarded")
    return NotFound(f"dead letter {event_id} does not exist")


async def _audit(
    conn: Conn,
    tenant_id: str,
    action: str,
    actor: str,
    request_id: str | None,
    event_id: UUID,
    detail: dict[str, Any],
) -> None:
    await audit.write_audit(
        conn,
        tenant_id,
        [
            {
                "action": action,
                "actor": actor,
                "request_id": request_id,
                "event_id": event_id,
                "detail": detail,
                "at": datetime.now(UTC),
            }
        ],
    )
