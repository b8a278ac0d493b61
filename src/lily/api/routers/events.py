"""``/events/{event_id}``: what became of an accepted write."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter

from lily.api.deps import RuntimeDep, Viewer
from lily.api.errors import problem_responses
from lily.api.models import EventStatus
from lily.domain.errors import NotFound
from lily.store import dead_letters as store_dead_letters
from lily.store import log as store_log

router = APIRouter(prefix="/events", tags=["events"])


@router.get("/{event_id}", response_model=EventStatus, responses=problem_responses(404))
async def event_status(event_id: UUID, principal: Viewer, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.db.tenant(principal.tenant_id) as conn:
        row = await store_log.get_event(conn, principal.tenant_id, event_id)
        letter = None
        if row is not None and row["status"] == "dead_lettered":
            letter = await store_dead_letters.get_letter(conn, principal.tenant_id, event_id)
    if row is None:
        raise NotFound(f"event {event_id} does not exist")
    latency = (row["applied_at"] - row["accepted_at"]).total_seconds() if row["applied_at"] else None
    return {
        "event_id": str(row["event_id"]),
        "state": row["status"],
        "kind": row["kind"],
        "subject": row["subject"],
        "source": row["source"],
        "attempts": row["attempts"],
        "error": row["error"],
        "result": row["result"],
        "accepted_at": row["accepted_at"],
        "applied_at": row["applied_at"],
        "accept_to_apply_seconds": latency,
        "replay_of": str(row["replay_of"]) if row["replay_of"] else None,
        # Where a dead-lettered event stands in the queue: open, replayed (and as which event), discarded.
        "dead_letter": None
        if letter is None
        else {
            "state": letter["state"],
            "replayed_as": str(letter["replayed_as"]) if letter["replayed_as"] else None,
            "resolved_at": letter["resolved_at"],
        },
    }
