"""Downstream propagation: when an asset's schema changes, or it is deprecated or deleted, the assets
downstream of it that have no live source of their own are told, through the pipeline.

For each such change the stage walks lineage downstream from the changed asset (depth-bounded, each
asset once: diamonds and cycles cannot cause storms) and appends one ``asset.upstream_changed`` event
per reached asset, in the same transaction as the change itself. Those events are ordered, retried and
audited like any other, and show in the downstream asset's history with their origin. Propagation
starts only from a direct change, never from a propagated one, so it cannot cascade.

"A source of its own" means a producer that will itself report upstream changes feeds the asset: an
OpenLineage producer or a connector. That is core data (``assets.has_active_source``, kept by
:func:`lily.domain.versions.next_version` for every write), not an attribute a hook may or may not
stamp. Assets maintained by hand (API, bulk) and lineage placeholders receive propagated updates.
"""

from __future__ import annotations

from typing import Any

from lily.domain.events import UPSTREAM_CHANGED, NewEvent
from lily.domain.tenants import TenantConfig
from lily.domain.versions import NextVersion
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store_assets
from lily.store import identity
from lily.store import lineage as store_lineage

SCHEMA_ATTRIBUTE = "columns"


def trigger(change: NextVersion) -> dict[str, Any] | None:
    """What about this change downstream assets should hear, or None if nothing."""
    changes, action, asset = change.changes, change.action, change.asset
    if action == "asset.deleted":
        return {"kind": "deleted"}
    if "attributes" in changes:
        before = (changes["attributes"]["from"] or {}).get(SCHEMA_ATTRIBUTE)
        after = (changes["attributes"]["to"] or {}).get(SCHEMA_ATTRIBUTE)
        if before != after and before is not None:
            return {"kind": "schema_changed", "columns": {"from": before, "to": after}}
    if "tags" in changes and "deprecated" in asset.tags and "deprecated" not in (changes["tags"]["from"] or []):
        return {"kind": "deprecated"}
    attrs = changes.get("attributes")
    if attrs and (attrs["to"] or {}).get("deprecated") and not (attrs["from"] or {}).get("deprecated"):
        return {"kind": "deprecated"}
    return None


async def _tenant_policy(ctx: BatchContext) -> tuple[bool, int]:
    row = await identity.get_tenant(ctx.conn, ctx.tenant_id)
    policy = TenantConfig.of((row or {}).get("config")).propagation
    return policy.enabled, policy.max_depth


async def propagate(ctx: BatchContext, events: list[PipelineEvent]) -> None:
    """The pipeline stage: queue ``asset.upstream_changed`` follow-ups for qualifying changes."""
    changed: list[tuple[PipelineEvent, NextVersion, dict[str, Any]]] = []
    for event in events:
        change = event.notes.change
        if event.outcome != "applied" or change is None or event.kind == UPSTREAM_CHANGED:
            continue
        what = trigger(change)
        if what is not None:
            changed.append((event, change, what))
    if not changed:
        return
    enabled, max_depth = await _tenant_policy(ctx)
    if not enabled:
        return
    # One query for the batch first: most changed assets (a bulk load of schemas, say) have nothing
    # downstream, and a walk per event would cost a round trip each.
    with_lineage = await store_lineage.feeding(ctx.conn, ctx.tenant_id, [c.asset.asset_id for _, c, _ in changed])
    for event, change, what in changed:
        origin_asset = change.asset
        if origin_asset.asset_id not in with_lineage:
            continue
        reached = await store_lineage.downstream_without_source(
            ctx.conn, ctx.tenant_id, [origin_asset.asset_id], max_depth
        )
        if not reached:
            continue
        targets = await store_assets.passive_assets(ctx.conn, ctx.tenant_id, reached)
        origin = {
            "asset_id": str(origin_asset.asset_id),
            "qualified_name": origin_asset.qualified_name,
            "event_id": str(event.event_id),
            "change": what,
        }
        ctx.follow_ups.extend(
            NewEvent(
                ctx.tenant_id,
                qn,
                UPSTREAM_CHANGED,
                {"origin": origin},
                "lily:propagation",
                event.request_id,
                source="propagation",
            )
            for qn in targets
        )
