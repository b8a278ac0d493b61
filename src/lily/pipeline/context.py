"""What a stage sees besides the events: the transaction, the tenant, settings and plugins."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from lily.config import Settings
from lily.domain.changes import ChangeEvent, bound
from lily.domain.events import uuid7
from lily.pipeline.model import PipelineEvent
from lily.store.db import Conn


@dataclass(slots=True)
class BatchContext:
    conn: Conn
    tenant_id: str
    settings: Settings
    now: datetime
    # Follow-up events a stage wants appended in the same transaction (e.g. downstream propagation).
    follow_ups: list[Any] = field(default_factory=list)
    # Change events of what this batch applied: the worker writes them in the batch's transaction, so
    # they commit (or roll back) with the change. Core behaviour, not a hook: see lily.domain.changes.
    changes: list[ChangeEvent] = field(default_factory=list)

    def emit_change(
        self,
        type_: str,
        event: PipelineEvent,
        *,
        asset_id: UUID | None = None,
        qualified_name: str | None = None,
        version: int | None = None,
        changes: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> ChangeEvent:
        """Record a change ``event`` applied (``type_``: ``<subject>.<verb>``); its ``changes`` are
        bounded in size. Emit only what is applied: a handler that rolls back a savepoint after
        emitting drops what it emitted since with :meth:`discard_changes_since`."""
        change = ChangeEvent(
            id=uuid7(),
            type=type_,
            tenant_id=self.tenant_id,
            actor=actor or event.actor,
            occurred_at=self.now,
            asset_id=asset_id,
            qualified_name=qualified_name,
            version=version,
            changes=bound(changes or {}),
            origin={"source": event.source, "event_id": event.event_id, "request_id": event.request_id},
        )
        self.changes.append(change)
        return change

    def changes_mark(self) -> int:
        """A mark to pass to :meth:`discard_changes_since` (take it before a savepoint)."""
        return len(self.changes)

    def discard_changes_since(self, mark: int) -> None:
        """Forget the change events emitted since ``mark``: their savepoint rolled back."""
        del self.changes[mark:]
