"""Applies ``asset.source_detached``: the connector instance that fed an asset was deleted, so the asset
becomes passive (``has_active_source`` false) and downstream propagation treats it as having no source.
An asset another source has written since keeps that source and is left alone."""

from __future__ import annotations

from lily.domain.connectors import SOURCE_DETACHED
from lily.domain.errors import Invalid
from lily.domain.versions import SourceDetached, next_version
from lily.pipeline.apply.changes import ChangeSet, writer
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store


class SourceDetachedHandler:
    name = "source_detached"
    kinds: tuple[str, ...] = (SOURCE_DETACHED,)

    def validate(self, event: PipelineEvent) -> None:
        if not isinstance(event.payload.get("source"), str):
            event.reject(Invalid("a detached source must be named", field="source"))

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        current = await store.current_by_names(ctx.conn, ctx.tenant_id, [e.subject for e in events])
        batch = ChangeSet(ctx)
        for event in events:
            change = SourceDetached(event.payload["source"])
            version = next_version(current.get(event.subject), event.subject, change, writer(ctx, event))
            if version is None:
                event.applied({"changed": False})
                continue
            batch.add(event, version, detail={"source": change.source})
            event.notes.change = version
            event.applied({"asset_id": str(version.asset.asset_id), "version": version.asset.version, "changed": True})
        await batch.write()
