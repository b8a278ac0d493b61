"""How every write answers: append through the log, then wait (bounded) for the pipeline's outcome.

``Prefer: respond-async`` (RFC 7240) skips the wait and answers 202 with the event's status URL; so
does a wait that runs out. ``Prefer: wait=N`` shortens the wait (never beyond the configured bound).
A repeat of an ``Idempotency-Key`` answers what the first request caused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from fastapi import Request, Response

from lily.api.deps import Principal, Runtime
from lily.api.responses import FastJSON
from lily.domain.errors import LilyError, problem_from_result
from lily.domain.events import NewEvent
from lily.pipeline.writer import CheckedAt, Submitted, request_hash
from lily.store import log as store_log
from lily.store.db import CALLER, Conn

# Renders an applied write's result, reading what it needs through the given connection (a read-only
# tenant transaction in pipeline mode: Database.read).
Reader = Callable[[Conn, dict[str, Any]], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class VersionAnswer:
    """Renders a write of an asset from the version it produced (``snapshot``) and its result. That
    version is read with the outcome in one statement (``lily_write_outcome``): one round trip and one
    send from the wake-up to the answer, where a :data:`Reader` needs the outcome before it can read."""

    answer: Callable[[dict[str, Any], dict[str, Any]], Response]


Render = Reader | VersionAnswer

STATUS_PATH = "/lily/v1/events/{}"


def preferences(request: Request) -> dict[str, str]:
    """RFC 7240 preferences, ``token[=value]`` separated by commas (parameters after ``;`` ignored)."""
    found: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for item in header.split(","):
            token = item.split(";", 1)[0].strip()
            if token:
                name, _, value = token.partition("=")
                found.setdefault(name.strip().lower(), value.strip().strip('"'))
    return found


def wants_async(request: Request) -> bool:
    return "respond-async" in preferences(request)


def wait_bound(prefs: dict[str, str], configured: float) -> float:
    """How long to wait for the pipeline: ``wait=N`` may shorten the configured bound, never lengthen it."""
    try:
        asked = float(prefs["wait"])
    except (KeyError, ValueError):
        return configured
    return max(0.0, min(asked, configured))


def accepted_response(submitted: Submitted, *, async_preferred: bool = True) -> FastJSON:
    url = STATUS_PATH.format(submitted.event_id)
    # Preference-Applied only when the client asked for it: a wait that ran out did not "apply" it.
    headers = {"Location": url, **({"Preference-Applied": "respond-async"} if async_preferred else {})}
    return FastJSON(
        {"event_id": submitted.event_id, "status": "accepted", "status_url": url},
        status_code=202,
        headers=headers,
    )


async def write(
    runtime: Runtime,
    request: Request,
    principal: Principal,
    event: NewEvent,
    body: Any,
    render: Render,
    *,
    checked: CheckedAt | None = None,
) -> Response:
    """Append ``event`` and answer once it is applied. ``checked``: the caller was checked at these epochs
    without a round trip, and the append confirms them (:class:`StaleCheck` if they moved)."""
    key = request.headers.get("idempotency-key")
    submitted = await runtime.writer.submit(
        event,
        idempotency_key=key,
        fingerprint=request_hash(request.method, request.url.path, body) if key else None,
        checked=checked,
    )
    prefs = preferences(request)
    if "respond-async" in prefs:
        return accepted_response(submitted)
    if not await runtime.writer.wait(submitted, wait_bound(prefs, runtime.settings.write_wait_seconds)):
        return accepted_response(submitted, async_preferred=False)
    event_id = UUID(submitted.event_id)
    if isinstance(render, VersionAnswer):
        async with runtime.db.alone(principal.tenant_id) as conn:
            outcome = await store_log.write_outcome(conn, principal.tenant_id, CALLER.get(), event_id)
        if not _applied(outcome, submitted):
            return accepted_response(submitted, async_preferred=False)
        assert outcome is not None and outcome["snapshot"] is not None
        return render.answer(outcome["snapshot"], outcome["result"])
    # One read-only transaction reads the outcome and renders it: a pipelined Database.read, so the
    # settings travel with the outcome's query and no BEGIN or COMMIT costs a round trip of its own.
    async with runtime.db.read(principal.tenant_id) as conn:
        outcome = await store_log.get_event(conn, principal.tenant_id, event_id)
        if not _applied(outcome, submitted):
            return accepted_response(submitted, async_preferred=False)
        assert outcome is not None
        return await render(conn, outcome["result"])


def _applied(outcome: dict[str, Any] | None, submitted: Submitted) -> bool:
    """Whether the write was applied; the problem it answers with if it failed or was dead-lettered
    (anything else, e.g. held for a retry, is still accepted)."""
    assert outcome is not None
    if outcome["status"] == "failed":
        raise problem_from_result(outcome["result"] or {})
    if outcome["status"] == "dead_lettered":
        raise DeadLettered(
            "the pipeline could not apply this write; it is in the dead-letter queue", event_id=submitted.event_id
        )
    return bool(outcome["status"] == "applied")


class DeadLettered(LilyError):
    status, type_slug, title = 503, "dead-lettered", "Write not applied"
