"""The pull feed: a tenant's change events in commit order from a cursor, waiting (bounded) for more.

A cursor is a position (xid, seq) in the order of :mod:`lily.store.changes`. Each read serves only rows
below its snapshot's horizon, so a page never skips a transaction that commits later than one it
served. When a read comes back short, everything below the horizon after the cursor has been seen, so
the next cursor moves up to the horizon itself: idle polls then start at the head, and rows filtered
out (other types, assets hidden from the caller) are not scanned again.

While it waits, a reader holds no database connection: it sleeps on the process's
:class:`~lily.changes.waker.ChangeWaker` (woken at commit) and polls as well, because a commit can be
notified before the feed may serve it (an older transaction still running holds the horizon back) and
a notification may be lost with the listener's connection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lily.changes.waker import ChangeWaker
from lily.domain.changes import FILTER_PATTERN
from lily.domain.errors import Invalid
from lily.store import changes as store
from lily.store.db import Database

MAX_WAIT_SECONDS = 30.0
MAX_TYPES = 20
END_OF_TRANSACTION = 2**63 - 1  # a seq past every row of its transaction
_POLL_SECONDS = 0.5  # longest sleep between reads while waiting
_RECHECK_SECONDS = 0.02  # first re-read after a wake-up that found nothing servable yet

Position = store.Position
START: Position = (0, 0)


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]
    next: Position


def valid_position(position: Any) -> bool:
    """A position this API issues: ``[xid, seq]``, two non-negative 63-bit integers."""
    return (
        isinstance(position, list)
        and len(position) == 2
        and all(type(v) is int and 0 <= v <= END_OF_TRANSACTION for v in position)
    )


def type_patterns(types: list[str] | None) -> list[str] | None:
    """``types`` (each ``a.b``, ``a.*`` or ``*``; comma-separated lists allowed) as LIKE patterns, or
    None for every type; 422 naming ``types`` for anything else."""
    if not types:
        return None
    items = [t.strip() for value in types for t in value.split(",") if t.strip()]
    if not items:
        return None
    if len(items) > MAX_TYPES:
        raise Invalid(f"at most {MAX_TYPES} types", field="types")
    for item in items:
        if len(item) > 100 or not FILTER_PATTERN.match(item):
            shown = item[:100].encode("unicode_escape").decode()
            raise Invalid(f"{shown!r} is not a change event type, 'subject.*' or '*'", field="types")
    if "*" in items:
        return None
    # The pattern grammar admits no LIKE wildcards but '*': '_' is the only one to escape.
    return sorted({i.replace("_", "\\_").removesuffix("*") + ("%" if i.endswith("*") else "") for i in items})


async def read(
    db: Database,
    waker: ChangeWaker | None,
    tenant_id: str,
    after: Position | None,
    *,
    types: list[str] | None,
    limit: int,
    wait: float,
) -> Page:
    """The next page after ``after`` (None: the oldest retained); with ``wait`` > 0 and nothing to
    serve, wait up to ``wait`` seconds for something, then answer an empty page. A position at or
    past the horizon was never issued: 422 naming ``cursor``."""
    like = type_patterns(types)
    position = after or START
    deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT_SECONDS)
    pause = _POLL_SECONDS
    first = True
    while True:
        seen = waker.generation(tenant_id) if waker is not None else 0
        async with db.tenant(tenant_id) as conn:
            horizon, xmax, rows = await store.feed(conn, tenant_id, position, like=like, limit=limit)
        if first and position[0] >= xmax:
            # Every cursor we answer lies below the horizon it was read at, below that snapshot's xmax,
            # and xmax only grows: a cursor at or past it names a transaction that does not exist yet.
            raise Invalid("cursor is not one this API issued", field="cursor")
        first = False
        if rows:
            last: Position = (int(rows[-1]["xid"]), int(rows[-1]["seq"]))
            if len(rows) < limit:
                last = max(last, (horizon - 1, END_OF_TRANSACTION))
            return Page(rows, last)
        position = max(position, (horizon - 1, END_OF_TRANSACTION)) if horizon > 0 else position
        remaining = deadline - time.monotonic()
        if remaining <= 0 or waker is None:
            return Page([], position)
        woke = await waker.wait(tenant_id, seen, min(remaining, pause))
        # Woken but nothing was servable at the last read: the commit is in, the horizon may lag behind
        # it for a moment (an older transaction finishing); re-read soon, backing off to the poll pace.
        pause = _RECHECK_SECONDS if woke else min(pause * 2, _POLL_SECONDS)
