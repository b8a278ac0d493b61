"""The classify stage, after apply: rule classification and propagation into new lineage.

- For every applied asset change that may change what the classifiers see (a new or restored asset, its
  columns, name, type or description), the classifiers (``lily.classifiers`` plugins) propose
  classifications. One query per batch compares the proposals with the rule rows and steward removals
  of those assets; only an asset whose proposals differ gets a ``classification.rules`` event (same
  subject, so after the change in the log), which the classification handler applies.
- For every applied lineage write that created edges or column mappings, the classifications that
  propagate from its upstream assets flow along the new lineage (steps the handler would take; one that
  exists already changes nothing).
- For every applied asset change whose blocking list (``lily.blocks_propagation``, see
  :func:`lily.domain.classification.blocking_patterns`) changed — only then is anything read — what
  flowed along the edges the asset is the process (job) of and is now blocked on every edge carrying that
  step is retracted; when it blocks less than before, its upstreams' propagating rows re-flow, as along
  new lineage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lily.domain import classification as cls
from lily.domain.assets import Asset, asset_id_for, to_document
from lily.domain.events import CLASSIFICATION_RETRACT, CLASSIFICATION_RULES, LINEAGE_DELETE, LINEAGE_UPSERT, NewEvent
from lily.pipeline.apply.classification import CHUNK, PROPAGATION_ACTOR, PROPAGATION_SOURCE, Flow
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.plugins.protocols import Classifier
from lily.store import classifications as store
from lily.store.classifications import Row

log = logging.getLogger(__name__)

RULE_ACTOR = "lily:classifier"
RULE_SOURCE = "classifier"
_SEEN_FIELDS = frozenset({"attributes", "name", "description", "type"})


def _columns_changed(changes: dict[str, Any]) -> bool:
    attrs = changes.get("attributes")
    if attrs is None:
        return bool(_SEEN_FIELDS & changes.keys())
    return (attrs["from"] or {}).get("columns") != (attrs["to"] or {}).get("columns") or bool(
        (_SEEN_FIELDS - {"attributes"}) & changes.keys()
    )


def _blocks_changed(changes: dict[str, Any]) -> tuple[set[str], set[str]] | None:
    """What the asset blocked before and after the change, if that changed (read from the change alone:
    every asset write passes here)."""
    attrs = changes.get("attributes")
    if attrs is None:
        return None
    before, after = set(cls.blocking_patterns(attrs["from"])), set(cls.blocking_patterns(attrs["to"]))
    return (before, after) if before != after else None


def proposals(classifiers: Mapping[str, Classifier], asset: Asset) -> list[dict[str, Any]]:
    """What the classifiers propose for ``asset``, on its own columns, as the rules event carries it."""
    doc = to_document(asset)
    columns = {c["name"] for c in cls.asset_columns(asset.attributes)}
    out = []
    for name, classifier in classifiers.items():
        try:
            found = classifier.classify(doc)
        except Exception:
            # A classifier is a plugin: its bug must not hold up the asset's writes. Logged, skipped.
            log.exception("classifier %s failed on %s", name, asset.qualified_name)
            continue
        for p in found:
            if not cls.is_name(p.classification) or (p.column is not None and p.column not in columns):
                continue
            confidence = min(1.0, max(0.0, float(p.confidence)))
            out.append(
                {
                    "column": p.column,
                    "classification": p.classification,
                    "confidence": confidence,
                    "classifier": name,
                    "reason": p.reason[:200],
                }
            )
    return out


async def classify(ctx: BatchContext, events: list[PipelineEvent], classifiers: Mapping[str, Classifier]) -> None:
    candidates: list[tuple[PipelineEvent, Asset]] = []
    lineage: list[PipelineEvent] = []
    jobs: list[tuple[PipelineEvent, Asset, set[str], set[str]]] = []
    for event in events:
        if event.outcome != "applied":
            continue
        if event.kind in (LINEAGE_UPSERT, LINEAGE_DELETE):
            lineage.append(event)
            continue
        change = event.notes.change
        if change is None:
            continue
        if (blocks := _blocks_changed(change.changes)) is not None:
            jobs.append((event, change.asset, *blocks))
        if not change.asset.live or not classifiers:
            continue
        if change.action in ("asset.created", "asset.restored") or _columns_changed(change.changes):
            candidates.append((event, change.asset))
    if candidates:
        await _rules(ctx, candidates, classifiers)
    if lineage:
        await _reflow(ctx, [e for e in lineage if e.kind == LINEAGE_UPSERT])
        await _unflow(ctx, lineage)
    if jobs:
        await _reblock(ctx, jobs)


async def _rules(
    ctx: BatchContext, candidates: list[tuple[PipelineEvent, Asset]], classifiers: Mapping[str, Classifier]
) -> None:
    state = await store.rule_state(ctx.conn, ctx.tenant_id, [a.asset_id for _, a in candidates])
    for event, asset in candidates:
        proposed = proposals(classifiers, asset)
        keys = {(p["column"], p["classification"]) for p in proposed}
        rules, removed = state.get(asset.asset_id, (set(), set()))
        if not (keys - rules - removed) and not (rules - keys):
            continue  # nothing new, nothing gone: no event
        ctx.follow_ups.append(
            NewEvent(
                ctx.tenant_id,
                asset.qualified_name,
                CLASSIFICATION_RULES,
                {"proposals": proposed},
                RULE_ACTOR,
                event.request_id,
                source=RULE_SOURCE,
            )
        )


async def _reflow(ctx: BatchContext, events: list[PipelineEvent]) -> None:
    for event in events:
        result = event.result or {}
        edges = result.get("edges") or []
        if not any(e.get("created") for e in edges) and not (result.get("columns") or {}).get("written"):
            continue
        upstreams = {asset_id_for(ctx.tenant_id, e["upstream"]) for e in edges if isinstance(e.get("upstream"), str)}
        if upstreams:
            await _flow_from(ctx, event, upstreams)


async def _flow_from(ctx: BatchContext, cause: PipelineEvent, upstreams: set[Any]) -> None:
    """The propagating rows of ``upstreams`` take one step along today's lineage (a step they took
    already changes nothing where it lands)."""
    flow = Flow(ctx)
    pending: list[tuple[str, str, dict[str, Any]]] = []
    for row in await store.propagating(ctx.conn, ctx.tenant_id, sorted(upstreams)):
        place = (row.asset_id, row.column)
        origin = place if row.origin_asset_id is None else (row.origin_asset_id, row.origin_column)
        await flow.step(pending, place, row.classification, origin, (row.distance or 0) + 1, row.confidence)
    flow.keep(pending)
    flow.queue(cause)


async def _unflow(ctx: BatchContext, events: list[PipelineEvent]) -> None:
    """Lineage removed (an asset's, or column mappings a write replaced): what propagated along the
    removed steps is retracted, step by step, like a removal at its source."""
    touched: set[Any] = set()
    for event in events:
        result = event.result or {}
        if event.kind == LINEAGE_DELETE:
            touched.add(asset_id_for(ctx.tenant_id, event.subject))
        elif (result.get("columns") or {}).get("removed"):
            touched |= {
                asset_id_for(ctx.tenant_id, e["downstream"])
                for e in result.get("edges") or []
                if isinstance(e.get("downstream"), str)
            }
    if touched:
        _retract(ctx, events[0], await store.unsupported(ctx.conn, ctx.tenant_id, sorted(touched)))


async def _reblock(ctx: BatchContext, jobs: list[tuple[PipelineEvent, Asset, set[str], set[str]]]) -> None:
    """Assets whose blocking list changed. Blocking more: each propagated row whose last step ran through
    one of them (as the job of the edge) and that every edge carrying the step now blocks is retracted,
    step by step downstream like lineage removed. Blocking less: the upstreams of their edges re-flow
    (steps still blocked are not taken)."""
    stricter = [(event, asset, after) for event, asset, _, after in jobs if after]
    if stricter:
        roots = cls.blocked_roots(set().union(*(after for _, _, after in stricter)))
        found = await store.through_processes(ctx.conn, ctx.tenant_id, [a.asset_id for _, a, _ in stricter], roots)
        blocked = [
            (qualified_name, row)
            for qualified_name, row, carriers in found
            if all(cls.blocked(row.classification, cls.blocking_patterns(attrs)) for attrs in carriers)
        ]
        _retract(ctx, stricter[0][0], blocked)
    # Whatever was blocked before and no longer is was in a pattern the list no longer has.
    looser = {asset.asset_id: event for event, asset, before, after in jobs if before - after}
    if looser:
        for process_id, upstreams in (await store.process_upstreams(ctx.conn, ctx.tenant_id, list(looser))).items():
            await _flow_from(ctx, looser[process_id], set(upstreams))


def _retract(ctx: BatchContext, cause: PipelineEvent, rows: list[tuple[str, Row]]) -> None:
    """Queue the retraction of these propagated rows (qualified name of their asset, row): one
    ``classification.retract`` event per asset, which goes on downstream where no other path carries it."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for qualified_name, row in rows:
        by_target.setdefault(qualified_name, []).append(
            {
                "column": row.column,
                "classification": row.classification,
                "origin": {"asset_id": str(row.origin_asset_id), "column": row.origin_column},
                "via": {"asset_id": str(row.via_asset_id), "column": row.via_column},
            }
        )
    for target, items in by_target.items():
        for i in range(0, len(items), CHUNK):
            ctx.follow_ups.append(
                NewEvent(
                    ctx.tenant_id, target, CLASSIFICATION_RETRACT, {"items": items[i : i + CHUNK]},
                    PROPAGATION_ACTOR, cause.request_id, source=PROPAGATION_SOURCE,
                )
            )  # fmt: skip
