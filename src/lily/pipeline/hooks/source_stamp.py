"""Stamps where an asset's data came from into ``attributes["lily.source"]``.

Readers of an asset then know whether a field was last written by the REST API, a bulk load, an
OpenLineage producer or Lily's own propagation, without digging through history. Also a worked
example of a hook: one ``enrich`` phase over the batch, nothing else.
"""

from __future__ import annotations

from lily.domain.events import ASSET_REPLACE, ASSET_UPSERT
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent

ATTRIBUTE = "lily.source"


class SourceStampHook:
    name = "source_stamp"

    async def enrich(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        for event in events:
            if event.kind in (ASSET_UPSERT, ASSET_REPLACE):
                event.notes.attributes_patch[ATTRIBUTE] = event.source
