"""The stage sequence applied to each batch: validate → pre-hooks → enrich → apply → post-hooks.

Stages take one tenant's events with distinct subjects, so set-based writes never see two versions of
one asset at once. A stage sets an event's outcome to reject it; later stages skip decided events.
Exceptions other than :class:`LilyError` are transient: the worker rolls back and retries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from lily.domain.errors import Invalid, LilyError
from lily.pipeline.apply import Handler
from lily.pipeline.context import BatchContext
from lily.pipeline.hooks import Hook
from lily.pipeline.model import PipelineEvent
from lily.pipeline.propagate import propagate

StageFn = Callable[[BatchContext, list[PipelineEvent]], Awaitable[None]]
_AFTER_APPLY = frozenset({"propagate", "post_hooks"})


@dataclass(slots=True)
class Pipeline:
    handlers: dict[str, Handler]
    hooks: Sequence[Hook]
    _stages: list[tuple[str, StageFn]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._stages = self.stages()

    def stages(self) -> list[tuple[str, StageFn]]:
        return [
            ("validate", self._validate),
            ("pre_hooks", self._hook_phase("pre")),
            ("enrich", self._hook_phase("enrich")),
            ("apply", self._apply),
            ("propagate", propagate),
            ("post_hooks", self._post_hooks),
        ]

    async def run(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        for name, stage in self._stages:
            # Stages up to apply see undecided events; the ones after it react to what was decided.
            pending = events if name in _AFTER_APPLY else [e for e in events if e.pending]
            if pending:
                await stage(ctx, pending)

    async def _validate(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        for event in events:
            handler = self.handlers.get(event.kind)
            if handler is None:
                event.reject(Invalid(f"unknown event kind {event.kind!r}", field="kind"))
            else:
                handler.validate(event)

    def _hook_phase(self, phase: str) -> StageFn:
        async def run(ctx: BatchContext, events: list[PipelineEvent]) -> None:
            for hook in self.hooks:
                method = getattr(hook, phase, None)
                if method is None:
                    continue
                for event in events:
                    if not event.pending:
                        continue
                    try:
                        method(event)
                    except LilyError as err:
                        event.reject(err)

        return run

    async def _apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        by_kind: dict[str, list[PipelineEvent]] = {}
        for event in events:
            by_kind.setdefault(event.kind, []).append(event)
        for kind, group in by_kind.items():
            await self.handlers[kind].apply(ctx, group)

    async def _post_hooks(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        applied = [e for e in events if e.outcome == "applied"]
        for hook in self.hooks:
            post = getattr(hook, "post", None)
            if post is not None:
                for event in applied:
                    post(event)
