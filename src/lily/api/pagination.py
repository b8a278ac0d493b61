"""Opaque cursors: every list answers ``{"items": [...], "next_cursor": str | null}``."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Query

from lily.domain.errors import Invalid
from lily.domain.ids import is_uuid_text

# Cursors this API issues are short; a longer one is not ours (and is not decoded at all).
Cursor = Annotated[
    str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]*$", description="next_cursor of the previous page")
]


def encode(position: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode(cursor: str | None, *, field: str = "cursor", valid: Callable[[Any], bool] | None = None) -> Any:
    """The position in ``cursor``; 422 naming ``field`` when it is not one this API issued.

    ``valid`` checks the decoded position's shape, so a well-formed but foreign cursor never reaches SQL.
    """
    if not cursor:
        return None
    try:
        position = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise Invalid(f"{field} is not one this API issued", field=field) from exc
    if valid is not None and not valid(position):
        raise Invalid(f"{field} is not one this API issued", field=field)
    return position


def short_name(value: Any, max_length: int) -> bool:
    """A non-empty printable string of at most ``max_length`` characters: what a user name, a key id or a
    name-keyed cursor can be. Anything else names nothing and never reaches SQL."""
    return isinstance(value, str) and 0 < len(value) <= max_length and value.isprintable()


def positive_int(position: Any) -> bool:
    return type(position) is int and 0 < position < 2**63


def rank_and_id(position: Any) -> bool:
    """A search position: ``[rank, asset id]``."""
    return (
        isinstance(position, list)
        and len(position) == 2
        and type(position[0]) in (int, float)
        and math.isfinite(position[0])
        and abs(position[0]) < 2**63
        and is_uuid_text(position[1])
    )


def time_and_id(position: Any) -> bool:
    """A position in time order: ``[ISO timestamp, event id]``."""
    if not (isinstance(position, list) and len(position) == 2 and isinstance(position[0], str)):
        return False
    try:
        datetime.fromisoformat(position[0])
    except ValueError:
        return False
    return is_uuid_text(position[1])


def page(items: list[Any], limit: int, position_of: Any) -> dict[str, Any]:
    """Build a page from ``limit + 1`` fetched rows: the extra row only tells whether more exist."""
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": encode(position_of(items[-1])) if more and items else None}
