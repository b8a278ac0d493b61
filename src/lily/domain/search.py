"""Search requests: filters, sorts, facets, the bounds on ranking and counting, cursor positions.

Pure rules; the SQL is in ``lily.store.search`` (functions of migration 0006).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from lily.domain.errors import Invalid
from lily.domain.ids import is_uuid_text

# Relevance ranks at most this many matches (plus every name-prefix match up to the same number): a
# common word matches a large share of a tenant, and ranking all of it costs time proportional to that.
RANK_CANDIDATES = 500
# ``total`` is exact up to this many matches; beyond it the answer says "more than" (total_exact false).
TOTAL_BOUND = 1000
# Facets count over at most this many matching rows; beyond it they are flagged as sampled. Each row
# counted is a heap row read: 5,000 cost 280 ms p99 at 8 clients on 2 cores (1M assets, a common word).
FACET_BOUND = 2000
FACET_TOP = 10
FACETS = ("type", "tag", "owner", "source", "classification")


class Sort(StrEnum):
    relevance = "relevance"
    name = "name"
    updated_at = "updated_at"


@dataclass(frozen=True, slots=True)
class Filters:
    """What a search matches. Every field narrows; list fields match any of their values, except tags and
    classifications (all of them)."""

    q: str | None = None
    types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    # Classification names, all of them; a parent matches its children (PII matches PII.Email).
    classifications: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    qualified_name: str | None = None
    qualified_name_prefix: str | None = None
    updated_since: datetime | None = None

    def document(self) -> dict[str, Any]:
        """The filter document the search functions read (no tenant: they take it from the transaction)."""
        doc: dict[str, Any] = {
            "types": list(self.types),
            "tags": list(self.tags),
            "classifications": list(self.classifications),
            "owners": list(self.owners),
            "sources": list(self.sources),
        }
        if self.q and self.q.strip():
            doc["q"] = self.q.strip()
        if self.qualified_name is not None:
            doc["qualified_name"] = self.qualified_name
        if self.qualified_name_prefix:
            doc["qualified_name_prefix"] = self.qualified_name_prefix
        if self.updated_since is not None:
            doc["updated_since"] = self.updated_since.isoformat()
        return doc


def effective_sort(sort: Sort | None, filters: Filters) -> Sort:
    """Relevance when there is text to rank by, else name: relevance without ``q`` has nothing to rank."""
    if sort is None:
        return Sort.relevance if filters.q and filters.q.strip() else Sort.name
    if sort is Sort.relevance and not (filters.q and filters.q.strip()):
        raise Invalid("sort=relevance needs q", field="sort")
    return sort


def parse_facets(raw: list[str]) -> tuple[str, ...]:
    """``facets=type,tag`` (or repeated): known names, each once, in the order asked."""
    names: list[str] = []
    for part in raw:
        for name in part.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in FACETS:
                raise Invalid(f"unknown facet {name!r}; known: {', '.join(FACETS)}", field="facets")
            if name not in names:
                names.append(name)
    return tuple(names)


def position_valid(sort: Sort, position: Any) -> bool:
    """A cursor's position is ``[sort, key, asset_id]``; the key's type follows the sort, and a cursor
    issued for one sort is not valid for another."""
    if not (
        isinstance(position, list) and len(position) == 3 and position[0] == sort.value and is_uuid_text(position[2])
    ):
        return False
    key = position[1]
    if sort is Sort.relevance:
        return type(key) in (int, float) and math.isfinite(key) and abs(key) < 1e6
    if sort is Sort.updated_at:
        if not isinstance(key, str) or len(key) > 64:
            return False
        try:
            stamp = datetime.fromisoformat(key)
        except ValueError:
            return False
        return stamp.tzinfo is not None
    return isinstance(key, str) and len(key.encode()) <= 4096 and "\x00" not in key


def position_of(sort: Sort, row: dict[str, Any]) -> list[Any]:
    """The cursor position after ``row`` (a row of the page function)."""
    key: Any
    if sort is Sort.relevance:
        key = row["score"]
    elif sort is Sort.updated_at:
        key = row["sort_updated"].isoformat()
    else:
        key = row["sort_name"]
    return [sort.value, key, str(row["asset_id"])]
