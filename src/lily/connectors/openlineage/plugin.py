"""OpenLineage as a ``lily.connectors`` plugin: Marquez's HTTP API in, and the ``openlineage.run`` handler.

Registered in Lily's ``pyproject.toml`` exactly as a third-party connector would be::

    [project.entry-points."lily.connectors"]
    openlineage = "lily.connectors.openlineage.plugin:OpenLineageConnector"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fastapi import APIRouter
from pydantic import BaseModel

from lily.plugins.protocols import EventHandler, NoConfig, WebContext


class OpenLineageConnector:
    name = "openlineage"
    Config: ClassVar[type[BaseModel]] = NoConfig  # pushed to, not polled: nothing to configure per tenant
    # Producers batch events and Spark plans are large: these paths get the bulk body limit.
    large_bodies: ClassVar[tuple[str, ...]] = ("/api/v1/lineage",)

    def router(self, web: WebContext) -> APIRouter:
        from lily.connectors.openlineage.router import build_router

        return build_router(web)

    def handlers(self) -> Sequence[EventHandler]:
        from lily.connectors.openlineage.run_handler import RunHandler

        return [RunHandler()]
