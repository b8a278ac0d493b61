"""Opaque cursors: every list answers ``{"items": [...], "next_cursor": str | null}``."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from lily.domain.errors import Invalid


def encode(position: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode(cursor: str | None) -> Any:
    if not cursor:
        return None
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise Invalid("cursor is not one this API issued", field="cursor") from exc


def page(items: list[Any], limit: int, position_of: Any) -> dict[str, Any]:
    """Build a page from ``limit + 1`` fetched rows: the extra row only tells whether more exist."""
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": encode(position_of(items[-1])) if more and items else None}
