"""How every write answers: append through the log, then wait (bounded) for the pipeline's outcome.

``Prefer: respond-async`` (RFC 7240) skips the wait and answers 202 with the event's status URL; so
does a wait that runs out. A repeat of an ``Idempotency-Key`` answers what the first request caused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from fastapi import Request, Response

from lily.api.deps import Principal, Runtime
from lily.api.responses import FastJSON
from lily.domain.errors import LilyError, problem_from_result
from lily.domain.events import NewEvent
from lily.pipeline.writer import Submitted, request_hash
from lily.store import log as store_log

Render = Callable[[dict[str, Any]], Awaitable[Response]]

STATUS_PATH = "/lily/v1/events/{}"


def wants_async(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return any(p.strip().lower() == "respond-async" for p in prefer.split(","))


def accepted_response(submitted: Submitted) -> FastJSON:
    url = STATUS_PATH.format(submitted.event_id)
    return FastJSON(
        {"event_id": submitted.event_id, "status": "accepted", "status_url": url},
        status_code=202,
        headers={"Location": url, "Preference-Applied": "respond-async"},
    )


async def write(
    runtime: Runtime,
    request: Request,
    principal: Principal,
    event: NewEvent,
    body: Any,
    render: Render,
) -> Response:
    key = request.headers.get("idempotency-key")
    submitted = await runtime.writer.submit(
        event,
        idempotency_key=key,
        fingerprint=request_hash(request.method, request.url.path, body) if key else None,
    )
    if wants_async(request) or not await runtime.writer.wait(submitted):
        return accepted_response(submitted)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        outcome = await store_log.get_event(conn, principal.tenant_id, UUID(submitted.event_id))
    assert outcome is not None
    if outcome["status"] == "failed":
        raise problem_from_result(outcome["result"] or {})
    if outcome["status"] == "dead_lettered":
        raise DeadLettered(
            "the pipeline could not apply this write; it is in the dead-letter queue",
            event_id=submitted.event_id,
        )
    if outcome["status"] != "applied":
        return accepted_response(submitted)
    return await render(outcome["result"])


class DeadLettered(LilyError):
    status, type_slug, title = 503, "dead-lettered", "Write not applied"
