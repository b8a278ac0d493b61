"""An event as the pipeline sees it while processing, and what became of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from lily.domain.errors import LilyError

# Stages before apply may put attributes here; apply merges them into the asset's attributes.
ATTRIBUTES_PATCH = "attributes_patch"


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
    notes: dict[str, Any] = field(default_factory=dict)  # scratch space shared between stages

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
