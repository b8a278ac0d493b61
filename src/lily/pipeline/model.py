"""An event as the pipeline sees it while processing, and what became of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from lily.domain.errors import LilyError
from lily.domain.versions import NextVersion


@dataclass(slots=True)
class EventNotes:
    """What the stages learn about one event and hand on to the later ones (typed, not string keys)."""

    # Enrich hooks → apply: attributes merged over the asset's own when an asset write is applied.
    attributes_patch: dict[str, Any] = field(default_factory=dict)
    # Validate → apply: the handler's parsed payload (e.g. the lineage request), parsed once.
    request: Any = None
    # Apply → propagate, post hooks: the asset version this event wrote, if it wrote one.
    change: NextVersion | None = None


@dataclass(slots=True)
class PipelineEvent:
    event_id: UUID
    partition: int
    seq: int
    tenant_id: str
    subject: str
    kind: str
    payload: dict[str, Any]
    actor: str
    request_id: str | None
    source: str
    bulk_job_id: UUID | None
    item_index: int | None
    attempts: int
    accepted_at: datetime
    outcome: str | None = None  # "applied" or "failed" once decided
    result: dict[str, Any] | None = None
    error: str | None = None
    notes: EventNotes = field(default_factory=EventNotes)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PipelineEvent:
        return cls(**row)

    @property
    def pending(self) -> bool:
        return self.outcome is None

    def applied(self, result: dict[str, Any]) -> None:
        self.outcome, self.result = "applied", result

    def reject(self, error: LilyError) -> None:
        """A permanent failure: the event is wrong, retrying cannot help."""
        self.outcome, self.result, self.error = "failed", error.to_problem(), error.detail
