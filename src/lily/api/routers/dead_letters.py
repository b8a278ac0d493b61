"""``/admin/dead-letters``: events the pipeline gave up on — list, inspect, replay, discard (admins only).

The replay policy is in :mod:`lily.pipeline.replay`; this module maps it onto HTTP.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from lily.api import pagination
from lily.api.deps import Admin, RequestId, RuntimeDep
from lily.api.errors import problem_responses
from lily.api.models import DeadLetter, DeadLetterPage, IsoDatetime, Replayed, ReplayReport
from lily.api.responses import FastJSON
from lily.api.writes import STATUS_PATH
from lily.domain.errors import NotFound
from lily.domain.storable import NO_NUL, check_text
from lily.pipeline import replay as policy
from lily.store import dead_letters as store

router = APIRouter(prefix="/admin/dead-letters", tags=["dead letters"])

State = Literal["open", "replayed", "discarded", "all"]


# Filters are compared with stored text: what text cannot hold matches nothing, and is refused (422).
FilterText = Annotated[str, StringConstraints(max_length=1024, pattern=NO_NUL), AfterValidator(check_text)]


class ReplayFilter(BaseModel):
    """Which open letters to replay; every field given must match. An empty filter means all of them."""

    # A misspelt member must not widen the filter to "replay everything".
    model_config = ConfigDict(extra="forbid")

    kind: FilterText | None = None
    subject: FilterText | None = Field(default=None, description="The asset's qualified name")
    since: IsoDatetime | None = Field(default=None, description="Dead-lettered at or after")
    until: IsoDatetime | None = Field(default=None, description="Dead-lettered before")
    limit: int = Field(default=500, ge=1, le=1000, description="At most this many per call")


def _document(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": str(row["event_id"]),
        "subject": row["subject"],
        "kind": row["kind"],
        "error": row["error"],
        "attempts": row["attempts"],
        "state": row["state"],
        "accepted_at": row["accepted_at"],
        "dead_lettered_at": row["dead_lettered_at"],
        "resolved_at": row["resolved_at"],
        "resolved_by": row["resolved_by"],
        "replayed_as": str(row["replayed_as"]) if row["replayed_as"] else None,
        "replay_of": str(row["replay_of"]) if row["replay_of"] else None,
        "partition": row["partition"],
        "seq": row["seq"],
        "actor": row["actor"],
        "source": row["source"],
        "payload": row["payload"],
    }


def _replayed(r: policy.Replayed) -> dict[str, Any]:
    return {
        "event_id": str(r.event_id),
        "replay_event_id": str(r.replay_event_id),
        "status_url": STATUS_PATH.format(r.replay_event_id),
    }


@router.get("", response_model=DeadLetterPage, responses=problem_responses())
async def list_dead_letters(
    principal: Admin,
    runtime: RuntimeDep,
    state: State = "open",
    kind: Annotated[str | None, Query(max_length=1024, pattern=NO_NUL)] = None,
    subject: Annotated[str | None, Query(max_length=1024, pattern=NO_NUL)] = None,
    since: IsoDatetime | None = None,
    until: IsoDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: pagination.Cursor = None,
) -> Response:
    """This tenant's dead letters, oldest first; open ones unless ``state`` says otherwise."""
    position = pagination.decode(cursor, valid=pagination.time_and_id)
    after = (datetime.fromisoformat(position[0]), UUID(position[1])) if position is not None else None
    f = store.Filter(state=None if state == "all" else state, kind=kind, subject=subject, since=since, until=until)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        rows = await store.list_letters(conn, principal.tenant_id, f, after=after, limit=limit + 1)
    page = pagination.page(rows, limit, lambda r: [r["dead_lettered_at"].isoformat(), str(r["event_id"])])
    page["items"] = [_document(r) for r in page["items"]]
    return FastJSON(page)


@router.get("/{event_id}", response_model=DeadLetter, responses=problem_responses(404))
async def get_dead_letter(event_id: UUID, principal: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.db.tenant(principal.tenant_id) as conn:
        row = await store.get_letter(conn, principal.tenant_id, event_id)
    if row is None:
        raise NotFound(f"dead letter {event_id} does not exist")
    return _document(row)


@router.post("/replay", response_model=ReplayReport, responses=problem_responses())
async def replay_matching(
    body: ReplayFilter,
    principal: Admin,
    runtime: RuntimeDep,
    request_id: RequestId,
    force: bool = False,
) -> dict[str, Any]:
    """Replay every open letter matching the filter, in log order. Letters that are no longer their
    subject's latest event are skipped (listed with the reason) unless ``force``."""
    f = store.Filter(kind=body.kind, subject=body.subject, since=body.since, until=body.until)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        replayed, skipped = await policy.replay_matching(
            conn,
            principal.tenant_id,
            f,
            force=force,
            actor=principal.actor,
            request_id=request_id,
            partitions=runtime.settings.partitions,
            limit=body.limit,
        )
    return {"replayed": [_replayed(r) for r in replayed], "skipped": skipped}


@router.post("/{event_id}/replay", status_code=202, response_model=Replayed, responses=problem_responses(404, 409))
async def replay_one(
    event_id: UUID,
    principal: Admin,
    runtime: RuntimeDep,
    request_id: RequestId,
    force: bool = False,
) -> FastJSON:
    """Append a replay of this letter; 409 if a newer event of its subject exists (unless ``force``)."""
    async with runtime.db.tenant(principal.tenant_id) as conn:
        done = await policy.replay(
            conn,
            principal.tenant_id,
            event_id,
            force=force,
            actor=principal.actor,
            request_id=request_id,
            partitions=runtime.settings.partitions,
        )
    body = _replayed(done)
    return FastJSON(body, status_code=202, headers={"Location": body["status_url"]})


@router.delete("/{event_id}", status_code=204, response_class=Response, responses=problem_responses(404, 409))
async def discard(event_id: UUID, principal: Admin, runtime: RuntimeDep, request_id: RequestId) -> Response:
    """Drop this letter from the queue without replaying it (the event stays in the log)."""
    async with runtime.db.tenant(principal.tenant_id) as conn:
        await policy.discard(conn, principal.tenant_id, event_id, actor=principal.actor, request_id=request_id)
    return Response(status_code=204)
