"""The garbage collector's settings for a long-running Lily process.

A request allocates a few thousand short-lived container objects (dicts of rows, pydantic models,
coroutine frames), so with CPython's default thresholds the collector runs a young collection every
few requests and, every hundred or so of those, a full one. A full collection walks every tracked
object in the process: the tens of thousands of function, class and dict objects that importing
FastAPI, pydantic, psycopg and the plugins left behind, all of which live for the life of the process.
Under load that walk stalled the event loop for the requests in flight: at 32 connections of point
reads the p99 was 75 to 84 ms against a p50 of 17 ms, and 37 to 44 ms once startup's objects were frozen
(bench/api.py; docs/performance.md, stop 17).
"""

from __future__ import annotations

import gc

# Young collections every 10,000 net allocations instead of 700: a request's garbage is mostly
# reference-counted away, so collecting more rarely costs little memory and far fewer pauses.
YOUNG_THRESHOLD = 10_000


_settled = False


def settle_after_startup() -> None:
    """Collect startup's garbage once, then move everything still alive out of the collector's sight
    (``gc.freeze``): it is never garbage, and no later collection walks it again.

    Once per process: a second app in the same process (the tests start one per test) finds the
    heap settled, and must not freeze the first one's garbage for good."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
