"""What every asset change writes: the asset's new state, a version holding the full snapshot and what
changed, and an audit entry — collected per batch and written as sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lily.domain import assets as rules
from lily.domain.audit import AuditEntry
from lily.domain.versions import NextVersion, Writer
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store


def writer(ctx: BatchContext, event: PipelineEvent) -> Writer:
    """Who writes the versions ``event`` makes: its tenant and source, at the batch's time."""
    return Writer(ctx.tenant_id, event.source, ctx.now)


@dataclass(slots=True)
class ChangeSet:
    ctx: BatchContext
    rows: list[rules.Asset] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    audits: list[AuditEntry] = field(default_factory=list)

    def add(
        self,
        event: PipelineEvent,
        version: NextVersion,
        *,
        detail: dict[str, Any],
        origin: dict[str, Any] | None = None,
        write_row: bool = True,
    ) -> None:
        """Record ``version`` for ``event``; ``write_row=False`` when the asset row is written already."""
        after = version.asset
        if write_row:
            self.rows.append(after)
        self.versions.append(
            {
                "asset_id": after.asset_id,
                "version": after.version,
                "action": version.action,
                "snapshot": rules.to_document(after),
                "changes": version.changes,
                "actor": event.actor,
                "event_id": event.event_id,
                "request_id": event.request_id,
                "origin": origin,
                "changed_at": self.ctx.now,
            }
        )
        self.audits.append(
            AuditEntry(
                version.action,
                event.actor,
                self.ctx.now,
                request_id=event.request_id,
                event_id=event.event_id,
                asset_id=after.asset_id,
                version_before=version.before.version if version.before else None,
                version_after=after.version,
                detail=detail,
            )
        )

    async def write(self) -> None:
        await store.write(self.ctx.conn, self.ctx.tenant_id, self.rows, self.versions, self.audits)
