"""A Lily hook plugin for tests: fails on purpose, transiently or for good.

It is a real plugin: ``../lily_test_hooks-0.1.dist-info/entry_points.txt`` declares it in the
``lily.hooks`` group, so putting ``tests/plugins`` on ``sys.path`` makes :func:`lily.plugins.load_plugins`
find it exactly as it finds an installed package's hooks.

- An asset write whose attributes hold ``"test.fail_attempts": N`` fails its first N attempts (the
  attempt number comes from the log, so a batch retried one by one does not count twice).
- Every event of a subject in :data:`BROKEN_SUBJECTS` fails, until the test "fixes" it by removing it.
"""

from __future__ import annotations

from typing import Any

from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent

FAIL_ATTEMPTS = "test.fail_attempts"
BROKEN_SUBJECTS: set[str] = set()


class InjectedFault(RuntimeError):
    """A failure the test asked for."""


def _attributes(payload: dict[str, Any]) -> dict[str, Any]:
    fields = payload.get("fields")  # asset.replace carries its new state under "fields"
    source = fields if isinstance(fields, dict) else payload
    attributes = source.get("attributes")
    return attributes if isinstance(attributes, dict) else {}


class FaultHook:
    name = "test_faults"
    seen = 0  # events this hook class has looked at, so a test can tell it was loaded and ran

    async def pre(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        # Raising fails the whole batch; the worker then retries its events one by one, so the
        # faulty event fails alone and the others are applied.
        for event in events:
            FaultHook.seen += 1
            if event.subject in BROKEN_SUBJECTS:
                raise InjectedFault(f"{event.subject} is broken (attempt {event.attempts + 1})")
            fail = _attributes(event.payload).get(FAIL_ATTEMPTS)
            if fail is not None and event.attempts < int(fail):
                raise InjectedFault(f"transient failure {event.attempts + 1} of {fail}")
