"""Applies ``asset.upstream_changed``: a new version of a downstream asset recording what changed
upstream and where it came from (``origin``), without touching what its owners wrote."""

from __future__ import annotations

from lily.domain.errors import Invalid
from lily.domain.events import UPSTREAM_CHANGED
from lily.pipeline.apply.changes import ChangeSet
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store

ATTRIBUTE = "lily.upstream_changed"


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
            before = current.get(event.subject)
            if before is None or before["deleted_at"] is not None:
                event.applied({"skipped": "asset no longer exists"})
                continue
            origin = event.payload["origin"]
            note = {"from": origin["qualified_name"], "change": origin.get("change"), "at": ctx.now.isoformat()}
            after = {
                **before,
                "attributes": {**before["attributes"], ATTRIBUTE: note},
                "version": before["version"] + 1,
                "updated_at": ctx.now,
            }
            batch.add(
                event,
                before,
                after,
                "asset.upstream_changed",
                {"upstream": origin},
                detail={"origin": origin},
                origin=origin,
            )
            event.applied({"asset_id": str(after["asset_id"]), "version": after["version"], "changed": True})
        await batch.write()
