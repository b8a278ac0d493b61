"""Applies the ``classification.*`` events: a steward's set and remove, the classifiers' proposals, and
each lineage step of propagation and of its retraction.

Every event is about one asset (its subject), so classification changes are ordered with the asset's
other changes. One that changes the asset's rows writes a version of the asset (action
``classification.added`` / ``.removed`` / ``.changed``, with ``origin`` for a propagated step), an
audit entry, a change event, and rewrites ``assets.classifications`` — all in the worker's transaction.

Propagation (see :class:`Flow`): a row that propagates queues one ``classification.propagate`` event per
downstream asset reached in one lineage step (column lineage for a column, table lineage for the asset
itself), unless the job on the edge blocks the name, the tenant's depth is reached, or a steward removed
it there. A row is kept per path (origin and the upstream place of the last step), so a place keeps a
name while any path carries it; a retraction walks the rows a place's name put downstream, step by step,
and stops where another path still carries it. A path longer than one a place already has from the same
origin is not recorded: a cycle can never carry a name back to where it came from.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ValidationError

from lily.domain import classification as cls
from lily.domain.assets import Asset, to_document
from lily.domain.audit import AuditEntry
from lily.domain.changes import CLASSIFICATION_ADDED, CLASSIFICATION_REMOVED
from lily.domain.errors import Invalid, LilyError, NotFound, invalid_from
from lily.domain.events import (
    CLASSIFICATION_PROPAGATE,
    CLASSIFICATION_REMOVE,
    CLASSIFICATION_RETRACT,
    CLASSIFICATION_RULES,
    CLASSIFICATION_SET,
    NewEvent,
)
from lily.domain.tenants import TenantConfig
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store_assets
from lily.store import classifications as store
from lily.store import identity
from lily.store.classifications import Row

PAYLOADS: dict[str, type[BaseModel]] = {
    CLASSIFICATION_SET: cls.SetPayload,
    CLASSIFICATION_REMOVE: cls.RemovePayload,
    CLASSIFICATION_RULES: cls.RulesPayload,
    CLASSIFICATION_PROPAGATE: cls.FlowPayload,
    CLASSIFICATION_RETRACT: cls.FlowPayload,
}
PROPAGATION_ACTOR = "lily:propagation"
PROPAGATION_SOURCE = "propagation"
CHUNK = 1000  # flow items per event


Place = tuple[UUID, str | None]


def _place(p: cls.Place) -> Place:
    return (p.asset_id, p.column)


def _doc(place: Place) -> dict[str, Any]:
    return {"asset_id": str(place[0]), "column": place[1]}


@dataclass(slots=True)
class Flow:
    """The propagation and retraction steps one batch queues (as follow-up events, one per target asset)."""

    ctx: BatchContext
    _policy: tuple[bool, int] | None = None
    _steps: dict[Place, list[store.Step]] = field(default_factory=dict)
    _reach: dict[Place, dict[Place, list[list[str]]]] = field(default_factory=dict)  # still_flows' index
    _out: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    # Per asset: the steward removals and the rows at the places its one propagation (or retraction) event
    # of the batch names, read for the whole batch at once (:meth:`read_ahead`); taken by that event.
    _ahead: dict[UUID, tuple[set[tuple[str | None, str]], dict[tuple[str | None, str], list[Row]]]] = field(
        default_factory=dict
    )

    async def policy(self) -> tuple[bool, int]:
        if self._policy is None:
            row = await identity.get_tenant(self.ctx.conn, self.ctx.tenant_id)
            config = TenantConfig.of((row or {}).get("config")).propagation
            self._policy = (config.enabled, config.max_depth)
        return self._policy

    async def prefetch(self, asset_id: UUID, columns: set[str | None]) -> None:
        """Read the lineage steps of several columns of one asset at once (a propagation event's)."""
        wanted = sorted(c for c in columns if c is not None and (asset_id, c) not in self._steps)
        if wanted:
            found = await store.column_steps(self.ctx.conn, self.ctx.tenant_id, asset_id, wanted)
            for column, steps in found.items():
                self._steps[(asset_id, column)] = steps

    async def read_ahead(self, events: list[PipelineEvent], current: dict[str, Asset]) -> None:
        """For a batch of propagation steps, read in three queries what each would read in three of its own:
        the removals and rows at its places, and the lineage one step on from its columns; for retraction
        steps, the rows. Only for an asset that no other event of the batch names (its rows would change
        between the read and its turn)."""
        named = Counter(e.subject for e in events)
        keys: list[tuple[UUID, str | None, str]] = []
        propagating = False
        for event in events:
            asset = current.get(event.subject)
            if named[event.subject] > 1 or asset is None or not asset.live:
                continue
            if event.kind not in (CLASSIFICATION_PROPAGATE, CLASSIFICATION_RETRACT):
                continue
            propagating |= event.kind == CLASSIFICATION_PROPAGATE
            req: cls.FlowPayload = event.notes.request
            keys += [(asset.asset_id, item.column, item.classification) for item in req.items]
        if not keys:
            return
        keys = list(dict.fromkeys(keys))
        removed = await store.removed_across(self.ctx.conn, self.ctx.tenant_id, keys) if propagating else {}
        existing = await store.at_across(self.ctx.conn, self.ctx.tenant_id, keys)
        for asset_id, rows in existing.items():
            self._ahead[asset_id] = (removed.get(asset_id, set()), rows)
        if not propagating:
            return
        # The lineage one step on from each column, and one step on from each step's upstream place (for
        # still_flows: is the step it arrived by still there, and still unblocked).
        vias = [
            _place(item.via)
            for event in events
            if event.kind == CLASSIFICATION_PROPAGATE
            and (asset := current.get(event.subject)) is not None
            and asset.asset_id in self._ahead
            for item in event.notes.request.items
        ]
        places = list(
            dict.fromkeys(
                (a, c) for a, c in [*((a, c) for a, c, _ in keys), *vias] if c is not None and (a, c) not in self._steps
            )
        )
        if places:
            for place, steps in (await store.columns_steps(self.ctx.conn, self.ctx.tenant_id, places)).items():
                self._steps[place] = steps

    def ahead(
        self, asset_id: UUID
    ) -> tuple[set[tuple[str | None, str]], dict[tuple[str | None, str], list[Row]]] | None:
        """What :meth:`read_ahead` read for the asset's step (once: it is then out of date)."""
        return self._ahead.pop(asset_id, None)

    async def still_flows(self, via: Place, place: Place, name: str) -> bool:
        """Whether lineage still leads from ``via`` to ``place`` through a job that does not block ``name``.
        A step is queued when its upstream place gets the name and applied later: a lineage removal or a
        job's new block applied in between would otherwise find nothing to retract yet, and the step would
        land after it."""
        reach = self._reach.get(via)
        if reach is None:
            if via not in self._steps:
                self._steps[via] = await store.steps(self.ctx.conn, self.ctx.tenant_id, via[0], via[1])
            reach = self._reach[via] = {}
            for s in self._steps[via]:  # by place: a column may have a thousand derived ones
                reach.setdefault((s.asset_id, s.column), []).append(cls.blocking_patterns(s.process_attributes))
        return any(not cls.blocked(name, patterns) for patterns in reach.get(place, ()))

    async def step(
        self, pending: list[tuple[str, str, dict[str, Any]]], place: Place, name: str, origin: Place, distance: int,
        confidence: float,
    ) -> None:  # fmt: skip
        """Queue ``name`` one lineage step downstream of ``place`` (``distance`` from ``origin``)."""
        enabled, max_depth = await self.policy()
        if not enabled or distance > max_depth:
            return
        if place not in self._steps:
            self._steps[place] = await store.steps(self.ctx.conn, self.ctx.tenant_id, place[0], place[1])
        for s in self._steps[place]:
            if (s.asset_id, s.column) == origin or cls.blocked(name, cls.blocking_patterns(s.process_attributes)):
                continue
            item = {
                "column": s.column,
                "classification": name,
                "origin": _doc(origin),
                "via": _doc(place),
                "distance": distance,
                "confidence": confidence,
            }
            pending.append((CLASSIFICATION_PROPAGATE, s.qualified_name, item))

    async def reflow(
        self, pending: list[tuple[str, str, dict[str, Any]]], asset: Asset, lost: list[tuple[str | None, str, Place]]
    ) -> None:
        """Places of ``asset`` lost their last recorded path of a name from an origin (``lost``: column,
        name, origin). Where an unrecorded one remains — a longer arm of a diamond, never recorded because a
        shorter one arrived first — the name comes back by it, one step from the nearest upstream place
        that still carries it other than by way of this place (so a cycle cannot hand a name back to where
        it was lost). What the place passed on is retracted meanwhile and passed on again when the name is
        back; the tenant's depth bounds it."""
        lost = [(c, n, o) for c, n, o in lost if (asset.asset_id, c) != o]
        enabled, max_depth = await self.policy()
        if not lost or not enabled:
            return
        keys = list(dict.fromkeys((c, n, o[0], o[1]) for c, n, o in lost))
        found = await store.carriers_into(self.ctx.conn, self.ctx.tenant_id, asset.asset_id, keys)
        for (column, name, origin_id, origin_column), carriers in found.items():
            for c in carriers:
                if c.distance + 1 > max_depth or cls.blocked(name, cls.blocking_patterns(c.process_attributes)):
                    continue
                item = {
                    "column": column,
                    "classification": name,
                    "origin": _doc((origin_id, origin_column)),
                    "via": _doc((c.asset_id, c.column)),
                    "distance": c.distance + 1,
                    "confidence": c.confidence,
                }
                pending.append((CLASSIFICATION_PROPAGATE, asset.qualified_name, item))
                break

    async def retract(
        self, pending: list[tuple[str, str, dict[str, Any]]], place: Place, name: str, origin: Place
    ) -> None:
        """Queue the removal of what ``place`` passed on of ``name`` from ``origin``."""
        for c in await store.carried_from(self.ctx.conn, self.ctx.tenant_id, place[0], place[1], name, *origin):
            item = {"column": c.column, "classification": name, "origin": _doc(origin), "via": _doc(place)}
            pending.append((CLASSIFICATION_RETRACT, c.qualified_name, item))

    async def retract_many(
        self, pending: list[tuple[str, str, dict[str, Any]]], asset_id: UUID, what: list[tuple[str | None, str, Place]]
    ) -> None:
        """:meth:`retract` for several (column, name, origin) of one asset, in one query."""
        if not what:
            return
        keys = list(dict.fromkeys((column, name, origin[0], origin[1]) for column, name, origin in what))
        found = await store.carried_from_many(self.ctx.conn, self.ctx.tenant_id, asset_id, keys)
        for (column, name, origin_id, origin_column), carried in found.items():
            for c in carried:
                item = {
                    "column": c.column,
                    "classification": name,
                    "origin": _doc((origin_id, origin_column)),
                    "via": _doc((asset_id, column)),
                }
                pending.append((CLASSIFICATION_RETRACT, c.qualified_name, item))

    def keep(self, pending: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Adopt an event's steps once it applied (a rejected event's steps are dropped with it)."""
        for kind, target, item in pending:
            self._out.setdefault((kind, target), []).append(item)

    def queue(self, cause: PipelineEvent) -> None:
        for (kind, target), items in self._out.items():
            for i in range(0, len(items), CHUNK):
                self.ctx.follow_ups.append(
                    NewEvent(
                        self.ctx.tenant_id,
                        target,
                        kind,
                        {"items": items[i : i + CHUNK]},
                        PROPAGATION_ACTOR,
                        cause.request_id,
                        source=PROPAGATION_SOURCE,
                    )
                )
        self._out.clear()


@dataclass(slots=True)
class Delta:
    added: list[Row] = field(default_factory=list)
    removed: list[Row] = field(default_factory=list)
    pending: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


class ClassificationHandler:
    name = "classification"
    kinds: tuple[str, ...] = tuple(PAYLOADS)

    def validate(self, event: PipelineEvent) -> None:
        try:
            event.notes.request = PAYLOADS[event.kind].model_validate(event.payload)
        except ValidationError as exc:
            event.reject(invalid_from(exc))

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        current = await store_assets.current_by_names(ctx.conn, ctx.tenant_id, [e.subject for e in events])
        versions: list[dict[str, Any]] = []
        audits: list[AuditEntry] = []
        rows: list[Asset] = []
        # One flow for the batch: the tenant's propagation settings and the lineage steps read for one
        # event serve the next (the handler writes neither); each event's own steps are queued with it.
        flow = Flow(ctx)
        await flow.read_ahead(events, current)
        for event in events:
            asset = current.get(event.subject)
            if asset is None or not asset.live:
                if event.kind in (CLASSIFICATION_SET, CLASSIFICATION_REMOVE):
                    event.reject(NotFound(f"asset {event.payload.get('asset_id')} does not exist"))
                else:
                    event.applied({"skipped": "asset no longer exists"})
                continue
            if event.kind in _NEVER_REFUSED:
                delta = await _APPLY[event.kind](ctx, event, asset, flow)
            else:
                try:
                    # A savepoint per event: a refused one must not abort the batch's transaction.
                    async with ctx.conn.transaction():
                        delta = await _APPLY[event.kind](ctx, event, asset, flow)
                except LilyError as err:
                    event.reject(err)
                    continue
            flow.keep(delta.pending)
            flow.queue(event)
            if not delta.added and not delta.removed:
                event.applied({"asset_id": str(asset.asset_id), "version": asset.version, "changed": False})
                continue
            after = await self._version(ctx, event, asset, delta, versions, audits)
            rows.append(after)
            current[event.subject] = after
            event.applied({"asset_id": str(after.asset_id), "version": after.version, "changed": True})
        if versions:
            await store_assets.write(ctx.conn, ctx.tenant_id, rows, versions, audits)

    async def _version(
        self,
        ctx: BatchContext,
        event: PipelineEvent,
        asset: Asset,
        delta: Delta,
        versions: list[dict[str, Any]],
        audits: list[AuditEntry],
    ) -> Asset:
        names = await store.refresh(ctx.conn, ctx.tenant_id, asset.asset_id)
        # The asset's source stays: classifying an asset is not writing it (it must not turn a
        # connector-fed asset into an API one).
        after = asset.evolve(version=asset.version + 1, updated_at=ctx.now, classifications=names)
        action = (
            "classification.changed"
            if delta.added and delta.removed
            else "classification.added"
            if delta.added
            else "classification.removed"
        )
        added = [r.describe() for r in delta.added]
        removed = [r.describe() for r in delta.removed]
        changes: dict[str, Any] = {"classifications": {"from": asset.classifications, "to": names}}
        if added:
            changes["added"] = added
        if removed:
            changes["removed"] = removed
        origin = _origin(event)
        versions.append(
            {
                "asset_id": after.asset_id,
                "version": after.version,
                "action": action,
                "snapshot": to_document(after),
                "changes": changes,
                "actor": event.actor,
                "event_id": event.event_id,
                "request_id": event.request_id,
                "origin": origin,
                "changed_at": ctx.now,
            }
        )
        audits.append(
            AuditEntry(
                action,
                event.actor,
                ctx.now,
                request_id=event.request_id,
                event_id=event.event_id,
                asset_id=after.asset_id,
                version_before=asset.version,
                version_after=after.version,
                detail={
                    "added": added,
                    "removed": removed,
                    "source": event.source,
                    **({"origin": origin} if origin else {}),
                },
            )
        )
        for type_, listed in ((CLASSIFICATION_ADDED, added), (CLASSIFICATION_REMOVED, removed)):
            if listed:
                ctx.emit_change(
                    type_, event, asset_id=after.asset_id, qualified_name=after.qualified_name,
                    version=after.version, changes={"items": listed, "classifications": names},
                )  # fmt: skip
        return after


def _origin(event: PipelineEvent) -> dict[str, Any] | None:
    """Where a propagated step came from, for the version's ``origin`` ("why is this column PII?")."""
    if event.kind not in (CLASSIFICATION_PROPAGATE, CLASSIFICATION_RETRACT):
        return None
    items: list[cls.FlowItem] = event.notes.request.items
    first = items[0]
    return {
        "kind": "classification",
        "origin": first.origin.model_dump(mode="json"),
        "via": first.via.model_dump(mode="json"),
        "distance": first.distance if event.kind == CLASSIFICATION_PROPAGATE else None,
        "items": len(items),
    }


def _columns(asset: Asset) -> set[str]:
    return {c["name"] for c in cls.asset_columns(asset.attributes)}


async def _set(ctx: BatchContext, event: PipelineEvent, asset: Asset, flow: Flow) -> Delta:
    req: cls.SetPayload = event.notes.request
    if req.column is not None and req.column not in _columns(asset):
        raise Invalid(f"{req.column!r} is not a column of asset {asset.asset_id} (attributes.columns)", field="column")
    delta = Delta()
    place: Place = (asset.asset_id, req.column)
    for name in req.names():
        before = [r for r in await store.at(ctx.conn, ctx.tenant_id, *place, name) if r.source == req.source]
        await store.lift_removal(ctx.conn, ctx.tenant_id, *place, name)
        row = Row(
            asset.asset_id,
            req.column,
            name,
            req.source,
            confidence=req.confidence,
            propagate=req.propagate,
            applied_by=event.actor,
            applied_at=ctx.now,
        )
        inserted = await store.insert(ctx.conn, ctx.tenant_id, row, event.event_id)
        if inserted and not before:
            delta.added.append(row)
        if req.propagate:
            await flow.step(delta.pending, place, name, place, 1, req.confidence)
        elif before and before[0].propagate:
            await flow.retract(delta.pending, place, name, place)
    return delta


async def _remove(ctx: BatchContext, event: PipelineEvent, asset: Asset, flow: Flow) -> Delta:
    req: cls.RemovePayload = event.notes.request
    place: Place = (asset.asset_id, req.column)
    rows = await store.at(ctx.conn, ctx.tenant_id, *place, req.classification)
    if not rows:
        where = f"column {req.column!r} of asset" if req.column is not None else "asset"
        raise NotFound(f"{where} {asset.asset_id} has no classification {req.classification}")
    await store.delete(ctx.conn, ctx.tenant_id, rows)
    await store.record_removal(
        ctx.conn, ctx.tenant_id, *place, req.classification, event.actor, ctx.now, event.event_id
    )
    delta = Delta(removed=rows)
    origins = {
        place if r.origin_asset_id is None else (r.origin_asset_id, r.origin_column)
        for r in rows
        if r.propagate or r.source == "propagated"
    }
    for origin in origins:
        await flow.retract(delta.pending, place, req.classification, origin)
    return delta


async def _rules(ctx: BatchContext, event: PipelineEvent, asset: Asset, flow: Flow) -> Delta:
    req: cls.RulesPayload = event.notes.request
    columns = _columns(asset)
    wanted: dict[tuple[str | None, str], cls.RuleProposal] = {}
    for p in req.proposals:
        if p.column is not None and p.column not in columns:
            continue  # the asset changed since: only its current columns are classified
        key = (p.column, p.classification)
        if key not in wanted or p.confidence > wanted[key].confidence:
            wanted[key] = p
    existing = [r for r in await store.of_asset(ctx.conn, ctx.tenant_id, asset.asset_id) if r.source == "rule"]
    have = {(r.column, r.classification) for r in existing}
    delta = Delta()
    for key, p in wanted.items():
        if key in have or await store.removed(ctx.conn, ctx.tenant_id, asset.asset_id, *key):
            continue
        row = Row(
            asset.asset_id,
            p.column,
            p.classification,
            "rule",
            confidence=p.confidence,
            propagate=True,
            applied_by=f"classifier:{p.classifier}",
            applied_at=ctx.now,
            detail={"classifier": p.classifier, "reason": p.reason},
        )
        if await store.insert(ctx.conn, ctx.tenant_id, row, event.event_id):
            delta.added.append(row)
            place: Place = (asset.asset_id, p.column)
            await flow.step(delta.pending, place, p.classification, place, 1, p.confidence)
    stale = [r for r in existing if (r.column, r.classification) not in wanted]
    if stale:
        await store.delete(ctx.conn, ctx.tenant_id, stale)
        delta.removed.extend(stale)
        for r in stale:
            place = (asset.asset_id, r.column)
            await flow.retract(delta.pending, place, r.classification, place)
    return delta


async def _propagate(ctx: BatchContext, event: PipelineEvent, asset: Asset, flow: Flow) -> Delta:
    req: cls.FlowPayload = event.notes.request
    delta = Delta()
    keys = list(dict.fromkeys((item.column, item.classification) for item in req.items))
    ahead = flow.ahead(asset.asset_id)
    if ahead is not None:
        removed, existing = ahead
    else:
        removed = await store.removed_many(ctx.conn, ctx.tenant_id, asset.asset_id, keys)
        existing = await store.at_many(ctx.conn, ctx.tenant_id, asset.asset_id, keys)
    passing: list[tuple[Place, str, Place, int, float]] = []
    for item in req.items:
        key = (item.column, item.classification)
        place: Place = (asset.asset_id, item.column)
        origin, via = _place(item.origin), _place(item.via)
        if place == origin or key in removed:
            continue
        same = [r for r in existing[key] if r.source == "propagated" and (r.origin_asset_id, r.origin_column) == origin]
        if any((r.via_asset_id, r.via_column) == via for r in same):
            continue
        if not await flow.still_flows(via, place, item.classification):
            continue  # the edge is gone, or its job blocks the name, since the step was queued
        if same and item.distance > min(r.distance or 0 for r in same):
            continue  # a longer way from the same origin (a cycle, or a longer arm): nothing new
        row = Row(
            asset.asset_id,
            item.column,
            item.classification,
            "propagated",
            origin_asset_id=origin[0],
            origin_column=origin[1],
            via_asset_id=via[0],
            via_column=via[1],
            distance=item.distance,
            confidence=item.confidence,
            propagate=True,
            applied_by=event.actor,
            applied_at=ctx.now,
        )
        existing[key].append(row)
        delta.added.append(row)
        if not same:  # the first way it arrives from this origin: pass it on
            passing.append((place, item.classification, origin, item.distance + 1, item.confidence))
    await store.insert_propagated(ctx.conn, ctx.tenant_id, delta.added, event.event_id)
    await flow.prefetch(asset.asset_id, {p[0][1] for p in passing})
    for place, name, origin, distance, confidence in passing:
        await flow.step(delta.pending, place, name, origin, distance, confidence)
    return delta


async def _retract(ctx: BatchContext, event: PipelineEvent, asset: Asset, flow: Flow) -> Delta:
    req: cls.FlowPayload = event.notes.request
    delta = Delta()
    keys = list(dict.fromkeys((item.column, item.classification) for item in req.items))
    ahead = flow.ahead(asset.asset_id)
    existing = ahead[1] if ahead is not None else await store.at_many(ctx.conn, ctx.tenant_id, asset.asset_id, keys)
    onward: list[tuple[str | None, str, Place]] = []
    for item in req.items:
        key = (item.column, item.classification)
        origin, via = _place(item.origin), _place(item.via)
        same = [r for r in existing[key] if r.source == "propagated" and (r.origin_asset_id, r.origin_column) == origin]
        gone = [r for r in same if (r.via_asset_id, r.via_column) == via]
        if not gone:
            continue
        existing[key] = [r for r in existing[key] if r not in gone]
        delta.removed.extend(gone)
        if len(gone) == len(same):  # no other recorded path from this origin carries it here: it goes on
            onward.append((item.column, item.classification, origin))
    await store.delete(ctx.conn, ctx.tenant_id, delta.removed)
    await flow.retract_many(delta.pending, asset.asset_id, onward)
    await flow.reflow(delta.pending, asset, onward)
    return delta


# Propagation and retraction steps are the pipeline's own and have nothing to refuse (no input to check;
# an asset gone since is skipped above): they need no savepoint, which cost two round trips per step.
_NEVER_REFUSED = frozenset({CLASSIFICATION_PROPAGATE, CLASSIFICATION_RETRACT})

_APPLY = {
    CLASSIFICATION_SET: _set,
    CLASSIFICATION_REMOVE: _remove,
    CLASSIFICATION_RULES: _rules,
    CLASSIFICATION_PROPAGATE: _propagate,
    CLASSIFICATION_RETRACT: _retract,
}
