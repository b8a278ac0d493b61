"""How a change becomes an asset's next version: one pure function, :func:`next_version`, for every
writer (the asset handler, lineage, propagation, connectors such as OpenLineage's run handler).

A writer describes what it wants as one of the change types below; :func:`next_version` answers the
asset's next state with the action and the ``changes`` its version records, or None when the change
alters nothing (nothing is written then). It also keeps the asset's source: every version records which
source wrote it, and whether a source that reports its own changes feeds the asset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lily.domain.assets import Asset, asset_id_for, default_name, diff, merge
from lily.domain.rules import check_if_match, require_asset

# Sources that do not keep an asset up to date by themselves: the REST API, bulk loads, Lily's own
# propagation. Any other source (``openlineage``, ``connector:<id>``, …) reports the asset's changes
# itself, so downstream propagation leaves the asset alone.
PASSIVE_SOURCES = frozenset({"api", "bulk", "propagation"})
UPSTREAM_ATTRIBUTE = "lily.upstream_changed"  # where a propagated change is noted on the downstream asset


def is_active_source(source: str) -> bool:
    return source not in PASSIVE_SOURCES


# Not frozen: these are built per event on the worker's hot path, and frozen dataclasses construct slower.
@dataclass(slots=True)
class Writer:
    """Who writes: the tenant, the event's source, and the time the version gets."""

    tenant_id: str
    source: str
    now: datetime


@dataclass(slots=True)
class Upsert:
    """Create, update or restore: the fields sent change (attributes merge key by key, null removes)."""

    fields: Mapping[str, Any]
    attributes_patch: Mapping[str, Any] | None = None  # from enrich hooks, merged over the attributes


@dataclass(slots=True)
class Replace:
    """Replace every mutable field of a live asset; fields left out return to their defaults."""

    fields: Mapping[str, Any]
    if_version: int | None = None
    attributes_patch: Mapping[str, Any] | None = None


@dataclass(slots=True)
class Delete:
    """Soft-delete a live asset."""

    if_version: int | None = None


@dataclass(slots=True)
class Placeholder:
    """A name lineage refers to before anyone wrote it; nothing if the asset exists."""

    type: str


@dataclass(slots=True)
class LineageRemoved:
    """The asset's lineage was removed (``removed`` describes what went); deleted assets too."""

    removed: Mapping[str, Any]


@dataclass(slots=True)
class UpstreamChanged:
    """Something upstream changed (``origin``: which asset, which event, what); nothing if deleted."""

    origin: Mapping[str, Any]


@dataclass(slots=True)
class SourceDetached:
    """The source that fed the asset is gone (a connector instance deleted): if that source wrote the
    asset last, it is passive from now on; nothing otherwise (another source took it over)."""

    source: str


Change = Upsert | Replace | Delete | Placeholder | LineageRemoved | UpstreamChanged | SourceDetached


@dataclass(slots=True)
class NextVersion:
    """An asset's next version: its new state, the action, and what changed (the version's ``changes``)."""

    before: Asset | None
    asset: Asset
    action: str
    changes: dict[str, Any]

    @property
    def created(self) -> bool:
        return self.before is None


def next_version(before: Asset | None, qualified_name: str, change: Change, writer: Writer) -> NextVersion | None:
    """The version ``change`` makes of the asset named ``qualified_name`` (currently ``before``, deleted
    ones included), or None if it changes nothing. Raises :class:`~lily.domain.errors.NotFound` and
    :class:`~lily.domain.errors.PreconditionFailed` when the change cannot apply."""
    if isinstance(change, Upsert | Replace):
        return _write(before, qualified_name, change, writer)
    if isinstance(change, Delete):
        current = _require_current(before, qualified_name, change.if_version)
        after = _successor(current, writer, deleted_at=writer.now)
        return NextVersion(before, after, "asset.deleted", _system_changes(current, after))
    if isinstance(change, Placeholder):
        if before is not None:
            return None
        return NextVersion(None, _placeholder(qualified_name, change.type, writer), "asset.placeholder_created", {})
    if isinstance(change, LineageRemoved):
        current = require_asset(before, qualified_name, include_deleted=True)
        after = _successor(current, writer)
        return NextVersion(before, after, "lineage.removed", {"lineage": dict(change.removed)})
    if isinstance(change, SourceDetached):
        if before is None or before.source != change.source or not before.has_active_source:
            return None
        after = before.evolve(version=before.version + 1, updated_at=writer.now, has_active_source=False)
        return NextVersion(before, after, "asset.updated", _system_changes(before, after))
    if before is None or not before.live:
        return None
    note = {
        "from": change.origin["qualified_name"],
        "change": change.origin.get("change"),
        "at": writer.now.isoformat(),
    }
    after = _successor(before, writer, attributes={**before.attributes, UPSTREAM_ATTRIBUTE: note})
    return NextVersion(before, after, "asset.upstream_changed", {"upstream": dict(change.origin)})


def _write(before: Asset | None, qualified_name: str, change: Upsert | Replace, writer: Writer) -> NextVersion | None:
    live = before is not None and before.live
    # The qualified name gives the default display name when the fields leave it out.
    fields = change.fields
    if fields.get("qualified_name") != qualified_name:
        fields = {**fields, "qualified_name": qualified_name}
    current_state = before.state() if before is not None and live else None
    if isinstance(change, Replace):
        current = _require_current(before, qualified_name, change.if_version)
        current_state = current.state()
        state = merge(current_state, fields, replace=True)
        action = "asset.replaced"
    else:
        state = merge(current_state, fields, replace=False)
        action = "asset.updated" if live else ("asset.restored" if before is not None else "asset.created")
    if change.attributes_patch:
        state["attributes"] = {**state["attributes"], **change.attributes_patch}
    if before is None:
        after = Asset(
            asset_id=asset_id_for(writer.tenant_id, qualified_name),
            qualified_name=qualified_name,
            placeholder=False,
            source=writer.source,
            has_active_source=is_active_source(writer.source),
            version=1,
            created_at=writer.now,
            updated_at=writer.now,
            deleted_at=None,
            **state,
        )
        return NextVersion(None, after, action, diff(None, state))
    active = before.has_active_source or is_active_source(writer.source)
    if current_state is None:  # a restore: it starts from nothing, like a create
        changes = diff(None, state)
    else:
        changes = diff(current_state, state)
        # Lily's own fields: a placeholder filled in, a new source (also a version: the source is data).
        if before.placeholder:
            changes["placeholder"] = {"from": True, "to": False}
        if before.source != writer.source:
            changes["source"] = {"from": before.source, "to": writer.source}
        if before.has_active_source != active:
            changes["has_active_source"] = {"from": before.has_active_source, "to": active}
        if not changes:
            return None  # the same write again: no version
    # A real write fills in a placeholder and restores a deleted asset.
    after = before.evolve(**state)
    after.placeholder, after.deleted_at, after.version = False, None, before.version + 1
    after.updated_at, after.source, after.has_active_source = writer.now, writer.source, active
    return NextVersion(before, after, action, changes)


def _require_current(before: Asset | None, qualified_name: str, if_version: int | None) -> Asset:
    current = require_asset(before, before.asset_id if before is not None else qualified_name)
    check_if_match(if_version, current.version)
    return current


def _successor(before: Asset, writer: Writer, **updates: Any) -> Asset:
    """``before`` one version on, written by ``writer`` (plus ``updates``)."""
    return before.evolve(
        version=before.version + 1,
        updated_at=writer.now,
        source=writer.source,
        has_active_source=before.has_active_source or is_active_source(writer.source),
        **updates,
    )


def _placeholder(qualified_name: str, type_: str, writer: Writer) -> Asset:
    # Nobody feeds a placeholder yet, whoever named it: it has no active source until a real write.
    return Asset(
        asset_id=asset_id_for(writer.tenant_id, qualified_name),
        qualified_name=qualified_name,
        type=type_,
        name=default_name(qualified_name),
        description=None,
        owners=[],
        tags=[],
        attributes={},
        placeholder=True,
        source=writer.source,
        has_active_source=False,
        version=1,
        created_at=writer.now,
        updated_at=writer.now,
        deleted_at=None,
    )


_SYSTEM_FIELDS = ("placeholder", "source", "has_active_source")


def _system_changes(before: Asset, after: Asset) -> dict[str, Any]:
    """``{field: {"from", "to"}}`` for the fields Lily keeps itself (a placeholder filled, a new source)."""
    changes: dict[str, Any] = {}
    for name in _SYSTEM_FIELDS:
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            changes[name] = {"from": old, "to": new}
    return changes
