"""Identifier checks shared by the cursors of every list."""

from __future__ import annotations

from typing import Any
from uuid import UUID


def is_uuid_text(value: Any) -> bool:
    """Whether ``value`` is a UUID in its canonical 36-character text form (what cursors carry)."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        UUID(value)
    except ValueError:
        return False
    return True
