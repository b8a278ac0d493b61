"""Stamps where an asset's data came from into ``attributes["lily.source"]``.

Readers of an asset then know whether a field was last written by the REST API, a bulk load, an
OpenLineage producer or Lily's own propagation, without digging through history.
"""

from __future__ import annotations

from lily.domain.events import ASSET_REPLACE, ASSET_UPSERT
from lily.pipeline.hooks import BaseHook
from lily.pipeline.model import ATTRIBUTES_PATCH, PipelineEvent

ATTRIBUTE = "lily.source"


class SourceStampHook(BaseHook):
    name = "source_stamp"

    def enrich(self, event: PipelineEvent) -> None:
        if event.kind in (ASSET_UPSERT, ASSET_REPLACE):
            event.notes.setdefault(ATTRIBUTES_PATCH, {})[ATTRIBUTE] = event.source
