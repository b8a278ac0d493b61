"""Search over assets through the ``lily_search_*`` functions (migration 0006).

The functions run as ``lily_search`` so that text, tag, trigram and prefix predicates can use their
indexes (under RLS none of them could: they are not LEAKPROOF); they take the tenant only from the
transaction's ``lily.tenant_id`` and add the caller's read rule (access policies) to every query they
run. A page's rows come with their columns from that same query (migration 0015), as counts and facets
always did: reading them back under RLS re-ran the per-row rule on rows the query had already filtered
by it, which cost about as much as the search itself for short pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from lily.domain.assets import Asset
from lily.domain.search import FACET_BOUND, FACET_TOP, RANK_CANDIDATES, TOTAL_BOUND, Filters, Sort
from lily.store.assets import ASSET_FIELDS
from lily.store.db import Conn

_COLUMNS = ", ".join(f"p.{c}" for c in ASSET_FIELDS)


@dataclass(frozen=True, slots=True)
class Hit:
    asset: Asset
    position: dict[str, Any]  # score, sort_name, sort_updated, asset_id: what a cursor is made of


@dataclass(frozen=True, slots=True)
class Page:
    hits: list[Hit]
    ranked: int | None  # how many candidates relevance ranked (None for the other sorts)


async def page(
    conn: Conn,
    filters: Filters,
    *,
    sort: Sort,
    after: list[Any] | None,
    limit: int,
    candidates: int = RANK_CANDIDATES,
) -> Page:
    """``limit`` matching live assets in ``sort`` order after the keyset position ``after``
    (``[key, asset_id]``)."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS}, p.score, p.sort_name, p.sort_updated, p.ranked"
        " FROM lily_search_page(%(f)s, %(sort)s, %(after)s, %(limit)s, %(candidates)s) WITH ORDINALITY AS p"
        " ORDER BY p.ordinality",
        {
            "f": Jsonb(filters.document()),
            "sort": sort.value,
            "after": Jsonb(after) if after is not None else None,
            "limit": limit,
            "candidates": candidates,
        },
    )
    rows = await cur.fetchall()
    hits = [
        Hit(
            Asset(**{c: row[c] for c in ASSET_FIELDS}),
            {k: row[k] for k in ("asset_id", "score", "sort_name", "sort_updated")},
        )
        for row in rows
    ]
    return Page(hits, rows[0]["ranked"] if rows else None)


async def count(conn: Conn, filters: Filters, *, bound: int = TOTAL_BOUND) -> tuple[int, bool]:
    """(matches, exact): exact up to ``bound``; beyond it ``(bound, False)``, meaning "more than"."""
    cur = await conn.execute("SELECT lily_search_count(%s, %s) AS n", [Jsonb(filters.document()), bound])
    row = await cur.fetchone()
    n = int(row["n"]) if row else 0
    return (n, True) if n <= bound else (bound, False)


@dataclass(frozen=True, slots=True)
class Facets:
    values: dict[str, list[dict[str, Any]]]
    exact: bool  # no more than the bound matched: every match was counted
    sampled: int | None  # how many matches were counted (bound + 1 when cut off); None when no value came back
    bound: int

    def total(self, bound: int = TOTAL_BOUND) -> tuple[int, bool] | None:
        """What :func:`count` would answer, from the facets' own pass: the matches they counted are all
        of them when fewer than ``bound`` (each way of matching was read to its end), and more than
        ``bound`` otherwise. None when that pass cannot tell (no facet value came back, or its bound is the
        smaller one)."""
        if self.sampled is None or self.bound < bound:
            return None
        return (self.sampled, True) if self.sampled <= bound else (bound, False)


async def facets(
    conn: Conn, filters: Filters, names: Sequence[str], *, top: int = FACET_TOP, bound: int = FACET_BOUND
) -> Facets:
    """The top values of the facets ``names`` with their counts, counted in one pass: exact when no more
    than ``bound`` rows match."""
    cur = await conn.execute(
        "SELECT facet, value, n, sampled FROM lily_search_facets(%s, %s, %s, %s)",
        [Jsonb(filters.document()), list(names), top, bound],
    )
    rows = await cur.fetchall()
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in rows:
        found[r["facet"]].append({"value": r["value"], "count": r["n"]})
    sampled = rows[0]["sampled"] if rows else None
    return Facets(found, sampled is None or sampled <= bound, sampled, bound)
