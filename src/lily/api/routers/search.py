"""``GET /metadata/search``: ranked full text, name prefix and typo matching, filters, sorts, keyset
pages, facets and bounded totals. Listed before ``metadata.item_router`` so ``/metadata/search`` never
matches ``/metadata/{asset_id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, StringConstraints

from lily.api import pagination
from lily.api.deps import ViewerReading
from lily.api.errors import problem_responses
from lily.api.models import AssetPage, IsoDatetime
from lily.api.responses import FastJSON
from lily.domain import assets as rules
from lily.domain import search as domain
from lily.domain.errors import Invalid
from lily.store import search as store

Term = Annotated[str, StringConstraints(max_length=256, pattern=rules.NO_NUL)]

router = APIRouter(prefix="/metadata", tags=["search"])


class FacetValue(BaseModel):
    value: str
    count: int


class Ranking(BaseModel):
    candidates: int
    bounded: bool


class SearchPage(AssetPage):
    total: int | None = None
    total_exact: bool | None = None
    facets: dict[str, list[FacetValue]] | None = None
    facets_exact: bool | None = None
    ranking: Ranking | None = None


@router.get(
    "/search",
    response_model=SearchPage,
    responses=problem_responses(),
    description=(
        "Relevance ranks exact name, then name prefix, then full text (name > qualified name > column names"
        " > description > tags), then typo-tolerant name matches. For very common terms only a bounded"
        " candidate set is ranked (`ranking.bounded`). `total` is exact up to a bound (`total_exact`)."
    ),
)
async def search(
    reading: ViewerReading,
    q: Annotated[
        str | None,
        Query(
            max_length=512,
            pattern=rules.NO_NUL,
            description="Words (stemmed in descriptions, exact in identifiers), name prefix or a misspelt name",
        ),
    ] = None,
    qualified_name: Annotated[str | None, Query(max_length=1024, pattern=rules.NO_NUL)] = None,
    qualified_name_prefix: Annotated[str | None, Query(max_length=1024, pattern=rules.NO_NUL)] = None,
    type: Annotated[list[Term], Query(description="Asset types; repeat for any of several")] = [],  # noqa: B006
    tag: Annotated[list[Term], Query(description="Tags; repeat to require all")] = [],  # noqa: B006
    classification: Annotated[
        list[Term], Query(description="Classifications; repeat to require all. PII matches PII.Email")
    ] = [],  # noqa: B006
    owner: Annotated[list[Term], Query(description="Owners; repeat for any of several")] = [],  # noqa: B006
    source: Annotated[list[Term], Query(description="Sources; repeat for any of several")] = [],  # noqa: B006
    updated_since: Annotated[IsoDatetime | None, Query(description="ISO 8601 with a time zone")] = None,
    sort: Annotated[domain.Sort | None, Query(description="Default: relevance with q, else name")] = None,
    facets: Annotated[
        list[Annotated[str, StringConstraints(max_length=64)]],
        Query(description=f"Comma-separated: {', '.join(domain.FACETS)}"),
    ] = [],  # noqa: B006
    total: Annotated[bool, Query(description="Count the matches (exact up to a bound)")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: pagination.Cursor = None,
) -> Response:
    if updated_since is not None and updated_since.tzinfo is None:
        raise Invalid("updated_since needs a time zone", field="updated_since")
    filters = domain.Filters(
        q=q,
        types=tuple(t.lower() for t in type),
        tags=tuple(tag),
        classifications=tuple(classification),
        owners=tuple(owner),
        sources=tuple(source),
        qualified_name=qualified_name,
        qualified_name_prefix=qualified_name_prefix,
        updated_since=updated_since,
    )
    order = domain.effective_sort(sort, filters)
    wanted = domain.parse_facets(facets)
    position = pagination.decode(cursor, valid=lambda p: domain.position_valid(order, p))
    # One round trip for a caller this process knows: the credential's check, the page, facets and total.
    principal, queued = await reading.read(
        lambda conn: store.queue(
            conn,
            filters,
            sort=order,
            after=position[1:] if position else None,
            limit=limit + 1,
            facet_names=wanted,
            total=total,
        )
    )
    result = await queued.results()
    found, faceted, counted = result.page, result.facets, result.total
    if total and counted is None:  # the facets' pass could not tell (no facet value came back)
        async with reading.runtime.db.tenant(principal.tenant_id) as conn:
            counted = await store.count(conn, filters)
    more = len(found.hits) > limit
    hits = found.hits[:limit]
    body: dict[str, Any] = {
        "items": [rules.to_document(h.asset) for h in hits],
        "next_cursor": pagination.encode(domain.position_of(order, hits[-1].position)) if more and hits else None,
    }
    if counted is not None:
        body["total"], body["total_exact"] = counted
    if faceted is not None:
        body["facets"], body["facets_exact"] = faceted.values, faceted.exact
    if found.ranked is not None and found.ranked >= domain.RANK_CANDIDATES:
        body["ranking"] = {"candidates": found.ranked, "bounded": True}
    return FastJSON(body)
