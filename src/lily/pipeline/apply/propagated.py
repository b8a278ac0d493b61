"""Applies ``asset.upstream_changed``: a new version of a downstream asset recording what changed
upstream and where it came from (``origin``), without touching what its owners wrote."""

from __future__ import annotations

from lily.domain.errors import Invalid
from lily.domain.events import UPSTREAM_CHANGED
from lily.domain.versions import UPSTREAM_ATTRIBUTE, UpstreamChanged, next_version
from lily.pipeline.apply.changes import ChangeSet, writer
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store

ATTRIBUTE = UPSTREAM_ATTRIBUTE


class UpstreamChangedHandler:
    name = "upstream_changed"
    kinds: tuple[str, ...] = (UPSTREAM_CHANGED,)

    def validate(self, event: PipelineEvent) -> None:
        origin = event.payload.get("origin")
        if not isinstance(origin, dict) or "qualified_name" not in origin:
            event.reject(Invalid("an upstream change needs its origin", field="origin"))

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        current = await store.current_by_names(ctx.conn, ctx.tenant_id, [e.subject for e in events])
        batch = ChangeSet(ctx)
        for event in events:
            origin = event.payload["origin"]
            version = next_version(
                current.get(event.subject), event.subject, UpstreamChanged(origin), writer(ctx, event)
            )
            if version is None:
                event.applied({"skipped": "asset no longer exists"})
                continue
            batch.add(event, version, detail={"origin": origin}, origin=origin)
            event.notes.change = version
            after = version.asset
            event.applied({"asset_id": str(after.asset_id), "version": after.version, "changed": True})
        await batch.write()
