"""Change events: what an applied change tells the world, for the pull feed and outbound deliveries.

Contract (for every writer and every reader of ``change_events``):

- A change event is written in the transaction that applies its change (pipeline handlers through
  :meth:`lily.pipeline.context.BatchContext.emit_change`; the worker inserts them before it commits).
  No change without its event, no event of a change that rolled back.
- ``type`` is ``<subject>.<verb>`` (:data:`TYPE_PATTERN`): ``asset.created``, ``asset.updated``, …
  ``changes`` has one shape per type (README, "Change events"), bounded in size by :func:`bound`.
- ``id`` is stable: a consumer de-duplicates on it (it is the ``webhook-id`` of deliveries).
- Readers take rows in commit order, (xid, seq), and only rows whose xid is below their snapshot's
  xmin (see migration 0009 and :mod:`lily.store.changes`); that way no late commit is ever skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

ASSET_CREATED = "asset.created"
ASSET_UPDATED = "asset.updated"
ASSET_RESTORED = "asset.restored"
ASSET_DELETED = "asset.deleted"
ASSET_UPSTREAM_CHANGED = "asset.upstream_changed"
LINEAGE_ADDED = "lineage.added"
LINEAGE_REMOVED = "lineage.removed"
LINEAGE_COLUMNS_CHANGED = "lineage.columns_changed"
CLASSIFICATION_ADDED = "classification.added"
CLASSIFICATION_REMOVED = "classification.removed"

TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
# A filter: a type, ``subject.*`` or ``*``.
FILTER_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*\.(\*|[a-z][a-z0-9_]*))$")

# A member of ``changes`` whose JSON is larger is replaced by a marker (the asset's version history
# holds the full value): deliveries stay small whatever an attribute holds.
MEMBER_MAX_BYTES = 4096
LIST_MAX_ITEMS = 100  # lists of things (edges, columns) beyond this are cut, with their full count


@dataclass(slots=True)
class ChangeEvent:
    """One change event, as written to ``change_events`` (its commit position is the store's)."""

    id: UUID
    type: str
    tenant_id: str
    actor: str
    occurred_at: datetime
    asset_id: UUID | None = None
    qualified_name: str | None = None
    version: int | None = None  # the asset's version after the change, when it made one
    changes: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)  # {"source", "event_id", "request_id"}

    def __post_init__(self) -> None:
        if self.type not in _CHECKED_TYPES:
            if not TYPE_PATTERN.match(self.type) or len(self.type) > 100:
                raise ValueError(f"change event type {self.type!r} is not <subject>.<verb>")
            if len(_CHECKED_TYPES) < 1000:
                _CHECKED_TYPES.add(self.type)


_CHECKED_TYPES: set[str] = set()  # types seen valid: the regex runs once per type, not per event


def type_matches(type_: str, patterns: list[str]) -> bool:
    """Whether ``type_`` matches one of ``patterns`` (``asset.*``, ``*`` or an exact type)."""
    for pattern in patterns:
        if pattern == "*" or pattern == type_:
            return True
        if pattern.endswith(".*") and type_.startswith(pattern[:-1]):
            return True
    return False


def bound(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` with every member larger than :data:`MEMBER_MAX_BYTES` of JSON replaced by
    ``{"truncated": true, "bytes": n}``."""
    if len(orjson.dumps(changes, default=str)) <= MEMBER_MAX_BYTES:
        return dict(changes)  # the usual case: one serialisation, no member can be over
    out: dict[str, Any] = {}
    for key, value in changes.items():
        size = len(orjson.dumps(value, default=str))
        out[key] = value if size <= MEMBER_MAX_BYTES else {"truncated": True, "bytes": size}
    return out


def cut(items: list[Any]) -> dict[str, Any]:
    """A list of things as ``{"items": first LIST_MAX_ITEMS, "count": all}``."""
    return {"items": items[:LIST_MAX_ITEMS], "count": len(items)}


def member_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """A version's ``{member: {"from", "to"}}`` as a change event's: ``attributes`` narrowed to the keys
    that changed (a key absent on one side is null there). :meth:`emit_change` bounds it."""
    attrs = changes.get("attributes")
    if attrs is None:
        return dict(changes)
    out = dict(changes)
    old, new = attrs.get("from") or {}, attrs.get("to") or {}
    if type(old) is dict and type(new) is dict:  # (exact types: an ABC isinstance costs more, per event)
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        out["attributes"] = {"from": {k: old.get(k) for k in keys}, "to": {k: new.get(k) for k in keys}}
    return out
