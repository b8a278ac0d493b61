"""What every asset change writes: the asset's new state, a version holding the full snapshot and what
changed, and an audit entry — collected per batch and written as sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lily.domain import assets as rules
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store


@dataclass(slots=True)
class ChangeSet:
    ctx: BatchContext
    rows: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        event: PipelineEvent,
        before: dict[str, Any] | None,
        after: dict[str, Any],
        action: str,
        changes: dict[str, Any],
        *,
        detail: dict[str, Any],
        origin: dict[str, Any] | None = None,
        write_row: bool = True,
    ) -> None:
        """Record ``after`` as the asset's next version; ``write_row=False`` when the row is written already."""
        if write_row:
            self.rows.append(after)
        self.versions.append(
            {
                "asset_id": after["asset_id"],
                "version": after["version"],
                "action": action,
                "snapshot": rules.to_document(after),
                "changes": changes,
                "actor": event.actor,
                "event_id": event.event_id,
                "request_id": event.request_id,
                "origin": origin,
                "changed_at": self.ctx.now,
            }
        )
        self.audits.append(
            {
                "asset_id": after["asset_id"],
                "action": action,
                "actor": event.actor,
                "version_before": before["version"] if before else None,
                "version_after": after["version"],
                "request_id": event.request_id,
                "event_id": event.event_id,
                "detail": detail,
                "at": self.ctx.now,
            }
        )

    async def write(self) -> None:
        await store.write(self.ctx.conn, self.ctx.tenant_id, self.rows, self.versions, self.audits)
