"""Pre- and post-processing hooks: plugins declared in the ``lily.hooks`` entry-point group.

A hook is a class with a no-argument constructor, a ``name``, and any of the methods of :class:`Hook`.
``pre`` and ``enrich`` run before the event is applied and may change its payload, or reject it by
raising :class:`lily.domain.errors.Invalid`; ``post`` runs after it was applied, inside the same
transaction, and sees the result. Any other exception counts as a transient failure: the event is
retried with backoff, then dead-lettered. Hooks must be quick and must not do network I/O — send
outbound work through the outbox instead.

Register one in your package's ``pyproject.toml``::

    [project.entry-points."lily.hooks"]
    my_hook = "my_package.hooks:MyHook"
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from lily.pipeline.model import PipelineEvent

log = logging.getLogger(__name__)

GROUP = "lily.hooks"


@runtime_checkable
class Hook(Protocol):
    name: str

    def pre(self, event: PipelineEvent) -> None:
        """Before enrichment: normalise or reject the payload."""

    def enrich(self, event: PipelineEvent) -> None:
        """Add derived attributes to the payload."""

    def post(self, event: PipelineEvent) -> None:
        """After apply, in the same transaction; ``event.result`` is set."""


class BaseHook:
    """Convenience base: every phase a no-op, so a hook overrides only what it needs."""

    name = "base"

    def pre(self, event: PipelineEvent) -> None:
        return None

    def enrich(self, event: PipelineEvent) -> None:
        return None

    def post(self, event: PipelineEvent) -> None:
        return None


def load_hooks(enabled: str = "*") -> list[Hook]:
    """Instantiate the hooks of the ``lily.hooks`` group, in name order; ``enabled`` is ``*`` or a list."""
    wanted = None if enabled.strip() == "*" else {n.strip() for n in enabled.split(",") if n.strip()}
    hooks: list[Hook] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if wanted is not None and ep.name not in wanted:
            continue
        hook = ep.load()()
        if not isinstance(hook, Hook):
            raise TypeError(f"hook {ep.name} ({ep.value}) does not implement lily.pipeline.hooks.Hook")
        log.info("loaded hook %s from %s", ep.name, ep.value)
        hooks.append(hook)
    return hooks
