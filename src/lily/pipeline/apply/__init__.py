"""Apply handlers: one per event kind. Each takes a batch of one tenant's events with distinct
subjects (the worker guarantees it) and writes the whole batch as sets.

To add a kind, write a handler module and add it to :func:`handlers`.
"""

from __future__ import annotations

from typing import Protocol

from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent


class Handler(Protocol):
    kinds: tuple[str, ...]

    def validate(self, event: PipelineEvent) -> None:
        """Reject (``event.reject``) a payload this handler cannot apply. No I/O."""

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        """Apply the events and set each one's outcome."""


def handlers() -> dict[str, Handler]:
    from lily.pipeline.apply.assets import AssetHandler
    from lily.pipeline.apply.lineage import LineageHandler
    from lily.pipeline.apply.propagated import UpstreamChangedHandler
    from lily.pipeline.apply.runs import RunHandler

    registry: dict[str, Handler] = {}
    for handler in (AssetHandler(), LineageHandler(), UpstreamChangedHandler(), RunHandler()):
        for kind in handler.kinds:
            registry[kind] = handler
    return registry
