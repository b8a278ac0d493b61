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

from psycopg import AsyncCursor
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
    return _page_of(await (await _queue_page(conn, filters, sort, after, limit, candidates)).fetchall())


async def _queue_page(
    conn: Conn, filters: Filters, sort: Sort, after: list[Any] | None, limit: int, candidates: int
) -> AsyncCursor[dict[str, Any]]:
    return await conn.execute(
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


def _page_of(rows: list[dict[str, Any]]) -> Page:
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
    return _count_of(await (await _queue_count(conn, filters, bound)).fetchone(), bound)


async def _queue_count(conn: Conn, filters: Filters, bound: int) -> AsyncCursor[dict[str, Any]]:
    return await conn.execute("SELECT lily_search_count(%s, %s) AS n", [Jsonb(filters.document()), bound])


def _count_of(row: dict[str, Any] | None, bound: int) -> tuple[int, bool]:
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
    return _facets_of(await (await _queue_facets(conn, filters, names, top, bound)).fetchall(), names, bound)


async def _queue_facets(
    conn: Conn, filters: Filters, names: Sequence[str], top: int, bound: int
) -> AsyncCursor[dict[str, Any]]:
    return await conn.execute(
        "SELECT facet, value, n, sampled FROM lily_search_facets(%s, %s, %s, %s)",
        [Jsonb(filters.document()), list(names), top, bound],
    )


def _facets_of(rows: list[dict[str, Any]], names: Sequence[str], bound: int) -> Facets:
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in rows:
        found[r["facet"]].append({"value": r["value"], "count": r["n"]})
    sampled = rows[0]["sampled"] if rows else None
    return Facets(found, sampled is None or sampled <= bound, sampled, bound)


@dataclass(frozen=True, slots=True)
class Queued:
    """A search sent in a :meth:`Database.read` pipeline (:func:`queue`); its results, fetched after the
    block, by :meth:`results`."""

    facet_names: tuple[str, ...]
    total: bool
    page: AsyncCursor[dict[str, Any]]
    facets: AsyncCursor[dict[str, Any]] | None
    count: AsyncCursor[dict[str, Any]] | None

    async def results(self) -> Found:
        found = _page_of(await self.page.fetchall())
        faceted = None
        if self.facets is not None:
            faceted = _facets_of(await self.facets.fetchall(), self.facet_names, FACET_BOUND)
        counted = _count_of(await self.count.fetchone(), TOTAL_BOUND) if self.count is not None else None
        if self.total and counted is None and faceted is not None:
            counted = faceted.total()
        return Found(found, faceted, counted)


@dataclass(frozen=True, slots=True)
class Found:
    page: Page
    facets: Facets | None
    total: tuple[int, bool] | None  # None when not asked for, or when the facets' pass could not tell


async def queue(
    conn: Conn,
    filters: Filters,
    *,
    sort: Sort,
    after: list[Any] | None,
    limit: int,
    facet_names: Sequence[str] = (),
    total: bool = False,
) -> Queued:
    """A page, and on request facets and the total, sent as one pipeline's statements (the route's one
    round trip, with the credential's check: ``Reading.read``). With facets the total comes from their
    pass (it counts up to a larger bound), not from a second scan of the matches; when that pass cannot
    tell (no facet value came back), ``Found.total`` is None and the caller counts apart."""
    names = tuple(facet_names)
    return Queued(
        names,
        total,
        await _queue_page(conn, filters, sort, after, limit, RANK_CANDIDATES),
        await _queue_facets(conn, filters, names, FACET_TOP, FACET_BOUND) if names else None,
        await _queue_count(conn, filters, TOTAL_BOUND) if total and not names else None,
    )
