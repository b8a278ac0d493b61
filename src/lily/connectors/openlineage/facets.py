"""Facets Lily keeps as they came, under ``attributes.openlineage``: bounded, and mergeable per facet.

Facets are kept for people to read, not as a blob store: a facet over 16 KiB, or facets beyond 128 KiB
in all, are kept as a marker saying how big they were. ``schema`` and ``columnLineage`` are not kept
here: they become Lily's columns and column lineage.
"""

from __future__ import annotations

from typing import Any

import orjson

ATTRIBUTE = "openlineage"  # attributes.openlineage: {namespace, name, facets}

MAX_FACET_BYTES = 16 * 1024
MAX_FACETS_BYTES = 128 * 1024
MAX_FACETS = 100
LIFTED = frozenset({"schema", "columnLineage"})


def _deleted(value: Any) -> bool:
    # The spec's way to remove a facet: send it again with ``_deleted: true``.
    return isinstance(value, dict) and value.get("_deleted") is True


def kept(facets: dict[str, Any]) -> dict[str, Any]:
    """The facets of an event that belong under ``attributes.openlineage`` (deletion markers included)."""
    return {k: v for k, v in facets.items() if k not in LIFTED and isinstance(v, dict)}


def bounded(facets: dict[str, Any]) -> dict[str, Any]:
    """The facets to store: deleted ones dropped, oversized ones reduced to a marker."""
    out: dict[str, Any] = {}
    total = 0
    for name in sorted(facets)[:MAX_FACETS]:
        value = facets[name]
        if name in LIFTED or not isinstance(value, dict) or _deleted(value):
            continue
        size = len(orjson.dumps(value))
        if size > MAX_FACET_BYTES or total + size > MAX_FACETS_BYTES:
            out[name] = {"_truncated": True, "_bytes": size}
            continue
        out[name] = value
        total += size
    return out


def merged(current: Any, namespace: str, name: str, incoming: dict[str, Any]) -> dict[str, Any]:
    """``attributes.openlineage`` after ``incoming``: facet by facet, so an event that carries fewer
    facets than the last one (COMPLETE after START, typically) erases none of them."""
    facets = dict(current.get("facets") or {}) if isinstance(current, dict) else {}
    for key, value in incoming.items():
        if _deleted(value):
            facets.pop(key, None)
        else:
            facets[key] = value
    return {"namespace": namespace, "name": name, "facets": bounded(facets)}
