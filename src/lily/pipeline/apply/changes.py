"""What every asset change writes: the asset's new state, a version holding the full snapshot and what
changed, an audit entry and a change event — collected per batch and written as sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lily.domain import assets as rules
from lily.domain import changes as change_types
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
        type_, changes = change_event_of(version)
        self.ctx.emit_change(
            type_, event, asset_id=after.asset_id, qualified_name=after.qualified_name, version=after.version,
            changes=changes,
        )  # fmt: skip

    async def write(self) -> None:
        await store.write(self.ctx.conn, self.ctx.tenant_id, self.rows, self.versions, self.audits)


# A version's action → the change event's type (a replace is an update: the API's PUT of the whole asset).
_TYPES = {
    "asset.created": change_types.ASSET_CREATED,
    "asset.placeholder_created": change_types.ASSET_CREATED,
    "asset.updated": change_types.ASSET_UPDATED,
    "asset.replaced": change_types.ASSET_UPDATED,
    "asset.restored": change_types.ASSET_RESTORED,
    "asset.deleted": change_types.ASSET_DELETED,
    "asset.upstream_changed": change_types.ASSET_UPSTREAM_CHANGED,
    "lineage.removed": change_types.LINEAGE_REMOVED,
}


def change_event_of(version: NextVersion) -> tuple[str, dict[str, Any]]:
    """The change event type and ``changes`` of an asset version (shapes: README, "Change events")."""
    # An action this table does not know (a new kind of version) is an update of the asset: never a
    # KeyError that would fail the batch.
    type_ = _TYPES.get(version.action, change_types.ASSET_UPDATED)
    if version.action == "asset.placeholder_created":
        after = version.asset
        return type_, {
            "type": {"from": None, "to": after.type},
            "name": {"from": None, "to": after.name},
            "placeholder": {"from": None, "to": True},
        }
    if type_ == change_types.LINEAGE_REMOVED:
        removed = version.changes["lineage"]
        return type_, {"direction": removed["direction"], "edges": change_types.cut(removed["removed"])}
    if type_ == change_types.ASSET_UPSTREAM_CHANGED:
        return type_, {"upstream": version.changes["upstream"]}
    if type_ == change_types.ASSET_DELETED:
        return type_, {"deleted": {"from": False, "to": True}}
    return type_, change_types.member_changes(version.changes)
