"""The ``dbt`` connector: a dbt project's artifacts as assets, lineage and test results (:mod:`.translate`).

Artifacts come from a directory under ``LILY_DBT_ARTIFACTS_ROOT`` (``config.path``, relative to it) or
from the last upload to ``POST /lily/v1/connectors/{tenant_id}/{connector_id}/artifacts`` (:mod:`.router`),
which also starts a run. A run is a complete crawl: a relation the project no longer builds is removed
(behind the registry's fail-safe).

Registered in Lily's ``pyproject.toml`` exactly as a third-party connector would be::

    [project.entry-points."lily.connectors"]
    dbt = "lily.connectors.dbt.plugin:DbtConnector"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lily.connectors.dbt import artifacts as files
from lily.connectors.dbt.translate import translate
from lily.domain import connectors as rules
from lily.domain.errors import Invalid
from lily.plugins.protocols import ConnectorRunContext, EventHandler, Observed, RunResult, WebContext

# ``postgres://host:5432``: the warehouse's OpenLineage namespace, which dbt's artifacts do not carry.
Namespace = Annotated[str, StringConstraints(min_length=3, max_length=300, pattern=r"^[a-z][a-z0-9+.\-]*://[^/\s]+$")]
RelativePath = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00-\x1f]+$")]


class DbtConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: Namespace = Field(
        description="The warehouse's OpenLineage namespace (postgres://host:port), as crawls and OpenLineage "
        "events of the same relations name it"
    )
    path: RelativePath | None = Field(
        default=None,
        description="A directory under LILY_DBT_ARTIFACTS_ROOT holding manifest.json (and catalog.json, "
        "run_results.json); unset: the artifacts uploaded to the connector",
    )
    max_removal_share: float = Field(default=rules.DEFAULT_MAX_REMOVAL_SHARE, ge=0, le=1)
    max_removal_count: int = Field(default=rules.DEFAULT_MAX_REMOVAL_MIN, ge=0)


class DbtConnector:
    name = "dbt"
    Config: ClassVar[type[BaseModel]] = DbtConfig
    # Uploads carry a manifest, which for a large project is tens of MB (the bulk body limit applies).
    large_bodies: ClassVar[tuple[str, ...]] = ("/lily/v1/connectors/{tenant_id}/{connector_id}/artifacts",)

    def router(self, web: WebContext) -> APIRouter:
        from lily.connectors.dbt.router import build_router

        return build_router(web)

    def handlers(self) -> Sequence[EventHandler]:
        return []

    async def run(self, ctx: ConnectorRunContext) -> RunResult:
        config = ctx.config
        assert isinstance(config, DbtConfig)
        found = await _artifacts(ctx, config)
        translated = translate(found.manifest, found.catalog, found.run_results, config.namespace)
        objects = [Observed(t.qualified_name, t.asset, t.lineage) for t in translated.objects]
        return RunResult(
            objects=objects,
            complete=True,
            errors=translated.problems,
            detail={
                "namespace": config.namespace,
                "relations": len(objects),
                "catalog": found.catalog is not None,
                "run_results": found.run_results is not None,
                "from": "directory" if config.path else "upload",
            },
        )


async def _artifacts(ctx: ConnectorRunContext, config: DbtConfig) -> files.Artifacts:
    if config.path is not None:
        root = ctx.settings.dbt_artifacts_root
        if root is None:
            raise Invalid("this Lily reads no dbt directories (LILY_DBT_ARTIFACTS_ROOT is unset)", field="config.path")
        return files.from_directory(root, config.path, ctx.settings.dbt_max_artifact_bytes)
    from lily.store import connector_artifacts

    # The run machinery's context carries Lily's database (not part of the protocol: a plugin needs it
    # only to read what was uploaded to it).
    db: Any = getattr(ctx, "db", None)
    if db is None:
        raise Invalid("uploads cannot be read in this context", field="config.path")
    async with db.tenant(ctx.tenant_id) as conn:
        uploaded = await connector_artifacts.load(conn, ctx.tenant_id, UUID(ctx.connector_id))
    if not uploaded:
        raise Invalid("no artifacts yet: upload them, or set config.path", field="config.path")
    return files.from_files(uploaded)
