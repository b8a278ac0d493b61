"""The stage sequence applied to each batch: validate → pre-hooks → enrich → apply → classify → propagate
→ post-hooks.

Stages take one tenant's events with distinct subjects, so set-based writes never see two versions of
one asset at once. A stage sets an event's outcome to reject it; later stages skip decided events.
Exceptions other than :class:`LilyError` are transient: the worker rolls back and retries.

Handlers and hooks are plugins (:mod:`lily.plugins`): the pipeline gets them from the registry and
knows no handler or hook by name. Hooks run batch by batch, ``await hook.phase(ctx, events)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lily.domain.errors import Invalid, LilyError
from lily.pipeline.classify import classify
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.pipeline.propagate import propagate
from lily.plugins.protocols import Classifier, EventHandler, HookPhase, PipelineHook

StageFn = Callable[[BatchContext, list[PipelineEvent]], Awaitable[None]]
_AFTER_APPLY = frozenset({"classify", "propagate", "post_hooks"})


@dataclass(slots=True)
class Pipeline:
    handlers: Mapping[str, EventHandler]
    hooks: Sequence[PipelineHook]
    # Rule classification runs on asset changes after apply (see lily.pipeline.classify).
    classifiers: Mapping[str, Classifier] = field(default_factory=dict)
    _stages: list[tuple[str, StageFn]] = field(init=False, repr=False)
    _post: list[HookPhase] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._post = self._phase("post")
        self._stages = self.stages()

    def stages(self) -> list[tuple[str, StageFn]]:
        return [
            ("validate", self._validate),
            ("pre_hooks", self._hook_phase("pre")),
            ("enrich", self._hook_phase("enrich")),
            ("apply", self._apply),
            ("classify", self._classify),
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

    def _phase(self, phase: str) -> list[HookPhase]:
        return [method for hook in self.hooks if (method := getattr(hook, phase, None)) is not None]

    def _hook_phase(self, phase: str) -> StageFn:
        methods = self._phase(phase)

        async def run(ctx: BatchContext, events: list[PipelineEvent]) -> None:
            for method in methods:
                # Each hook sees what the hooks before it left undecided.
                pending = [e for e in events if e.pending]
                if not pending:
                    return
                try:
                    await method(ctx, pending)
                except LilyError as err:
                    # A hook refusing the batch as a whole: every event it was shown is rejected.
                    for event in pending:
                        if event.pending:
                            event.reject(err)

        return run

    async def _apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        # Each handler gets its events as runs of consecutive ones, in log order: a batch's subjects are
        # distinct, but one event may depend on another's subject (a lineage write creating the
        # placeholder that a later write of the batch fills), so grouping by kind could reorder them.
        run: list[PipelineEvent] = []
        for event in events:
            if run and self.handlers[event.kind] is not self.handlers[run[0].kind]:
                await self.handlers[run[0].kind].apply(ctx, run)
                run = []
            run.append(event)
        if run:
            await self.handlers[run[0].kind].apply(ctx, run)

    async def _classify(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        await classify(ctx, events, self.classifiers)

    async def _post_hooks(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        # Post-hooks see every event of the batch as decided (applied or rejected); a LilyError here
        # cannot un-apply anything, so it is not caught: the batch rolls back and is retried.
        for method in self._post:
            await method(ctx, events)
