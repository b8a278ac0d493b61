"""``/metadata/governance/classification``: classify assets and columns, remove a classification, read an
asset's classifications, the tenant's inventory of classified places, and its taxonomy.

Writes go through the log (``classification.set`` / ``classification.remove``, subject the asset's
qualified name) and answer the asset's classifications once applied; what propagates downstream
follows as events of its own.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response

from lily.api import access, pagination, writes
from lily.api.deps import Principal, RequestId, RuntimeDep, Steward, Viewer
from lily.api.errors import problem_responses
from lily.api.models import WRITE_RESPONSES, IdempotencyKeyHeader
from lily.api.responses import FastJSON
from lily.domain import classification as cls
from lily.domain.assets import Asset
from lily.domain.errors import Conflict, Forbidden, Invalid, NotFound
from lily.domain.events import CLASSIFICATION_REMOVE, CLASSIFICATION_SET, NewEvent
from lily.domain.ids import is_uuid_text
from lily.domain.rules import require_asset
from lily.store import assets as store_assets
from lily.store import classifications as store
from lily.store.db import Conn

router = APIRouter(prefix="/metadata/governance/classification", tags=["governance"])

MAX_TAXONOMY = 1000  # names a tenant may add


def _item(row: store.Row) -> dict[str, Any]:
    described = row.describe()
    return {
        "classification": row.classification,
        "column": row.column,
        "source": row.source,
        "propagated_from": described.get("propagated_from"),
        "confidence": row.confidence,
        "applied_by": row.applied_by,
        "applied_at": row.applied_at,
        "propagate": row.propagate,
        **({"detail": row.detail} if row.detail else {}),
    }


async def _document(conn: Conn, tenant_id: str, asset_id: UUID) -> dict[str, Any]:
    rows = await store.of_asset(conn, tenant_id, asset_id)
    return {"asset_id": str(asset_id), "items": [_item(r) for r in rows]}


def _render(tenant_id: str, asset_id: UUID) -> writes.Render:
    async def render(conn: Conn, result: dict[str, Any]) -> Response:
        return FastJSON(await _document(conn, tenant_id, asset_id))

    return render


async def _unknown_names(conn: Conn, tenant_id: str, names: list[str]) -> list[str]:
    custom = [n for n in names if n not in cls.BUILT_IN]
    known = await store.taxonomy_known(conn, tenant_id, custom) if custom else set()
    return [n for n in custom if n not in known]


async def _may_govern(conn: Conn, principal: Principal, asset: Asset) -> None:
    """403 unless the caller may govern the asset: a steward's baseline, less any deny policy, plus any
    allow policy giving ``govern`` (reads were settled already: a hidden asset is a 404 before this)."""
    decided = (await access.Checker.load(conn, principal)).decide(access.facts(asset))["govern"]
    if not decided.allowed:
        raise Forbidden(f"you may not govern asset {asset.qualified_name[:200]!r}")
    if decided.reason == "admin" and decided.policy_id is not None:
        await access.audit_override(conn, principal, asset.asset_id, "govern", [decided])


# The taxonomy's routes come before /{asset_id}, which would otherwise take "taxonomy" for an asset id.
@router.get("/taxonomy", response_model=cls.TaxonomyPage, responses=problem_responses())
async def list_taxonomy(principal: Viewer, runtime: RuntimeDep) -> Response:
    """Every name the tenant may use: the built-in ones and those its stewards added."""
    async with runtime.db.tenant(principal.tenant_id) as conn:
        added = await store.taxonomy(conn, principal.tenant_id)
    items = [{"name": n, "description": d, "built_in": True} for n, d in cls.BUILT_IN.items()]
    items += [{**row, "built_in": False} for row in added]
    return FastJSON({"items": sorted(items, key=lambda i: i["name"])})


@router.post("/taxonomy", status_code=201, response_model=cls.TaxonomyItem, responses=problem_responses(409))
async def add_to_taxonomy(body: cls.TaxonomyIn, principal: Steward, runtime: RuntimeDep) -> Response:
    """Add a name (a child of a built-in root, or a root of the tenant's own). 409 if it exists."""
    if body.name in cls.BUILT_IN:
        raise Conflict(f"{body.name} is a built-in classification", field="name")
    async with runtime.db.tenant(principal.tenant_id) as conn:
        if await store.taxonomy_size(conn, principal.tenant_id) >= MAX_TAXONOMY:
            raise Invalid(f"a tenant's taxonomy holds at most {MAX_TAXONOMY} added names", field="name")
        row = await store.taxonomy_add(conn, principal.tenant_id, body.name, body.description, principal.actor)
    if row is None:
        raise Conflict(f"{body.name} is in the taxonomy already", field="name")
    return FastJSON({**row, "built_in": False}, status_code=201)


@router.post(
    "",
    response_model=cls.AssetClassifications,
    responses={**WRITE_RESPONSES, **problem_responses(404, 409, 413)},
)
async def classify(
    body: cls.ClassifyIn,
    request: Request,
    principal: Viewer,
    runtime: RuntimeDep,
    request_id: RequestId,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Classify an asset (``column`` absent) or one of its columns with names of the taxonomy; with
    ``propagate`` they flow downstream along lineage. Answers the asset's classifications once applied.
    Needs ``govern`` on the asset: the steward role, or an access policy allowing it."""
    names = body.names()
    async with runtime.db.tenant(principal.tenant_id) as conn:
        asset = require_asset(await store_assets.get(conn, principal.tenant_id, body.asset_id), body.asset_id)
        await _may_govern(conn, principal, asset)
        unknown = await _unknown_names(conn, principal.tenant_id, names)
    if unknown:
        raise Invalid(
            f"not in the tenant's taxonomy: {', '.join(unknown)} (add them under /taxonomy first)",
            errors=[
                {"field": f"classifications[{body.classifications.index(n)}]", "message": f"unknown classification {n}"}
                for n in unknown
            ],
        )
    if body.column is not None and body.column not in {c["name"] for c in cls.asset_columns(asset.attributes)}:
        raise Invalid(f"{body.column!r} is not a column of the asset (attributes.columns)", field="column")
    payload = body.model_dump(mode="json")
    event = NewEvent(
        principal.tenant_id, asset.qualified_name, CLASSIFICATION_SET, payload, principal.actor, request_id
    )
    return await writes.write(runtime, request, principal, event, payload, _render(principal.tenant_id, asset.asset_id))


@router.get("", response_model=cls.InventoryPage, responses=problem_responses())
async def inventory(
    principal: Viewer,
    runtime: RuntimeDep,
    classification: Annotated[
        str | None,
        Query(max_length=512, pattern=cls.NAME_PATTERN, description="A name; its children match too (PII: PII.*)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: pagination.Cursor = None,
) -> Response:
    """Every classified asset and column of the tenant (live assets), one item per place and name."""
    after = pagination.decode(cursor, valid=_inventory_position)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        rows = await store.inventory(
            conn, principal.tenant_id, classification, tuple(after) if after else None, limit + 1
        )
    return FastJSON(
        pagination.page(rows, limit, lambda r: [str(r["asset_id"]), r["column"] or "", r["classification"]])
    )


def _inventory_position(position: Any) -> bool:
    return (
        isinstance(position, list)
        and len(position) == 3
        and is_uuid_text(position[0])
        and all(isinstance(p, str) and len(p) <= 1024 and p.isprintable() for p in position[1:])
    )


@router.get("/{asset_id}", response_model=cls.AssetClassifications, responses=problem_responses(404))
async def asset_classifications(asset_id: UUID, principal: Viewer, runtime: RuntimeDep) -> Response:
    """The asset's classifications and its columns', one item per way each is carried."""
    async with runtime.db.tenant(principal.tenant_id) as conn:
        require_asset(await store_assets.get(conn, principal.tenant_id, asset_id), asset_id)
        return FastJSON(await _document(conn, principal.tenant_id, asset_id))


@router.delete(
    "/{asset_id}",
    response_model=cls.AssetClassifications,
    responses={**WRITE_RESPONSES, **problem_responses(404, 409)},
)
async def declassify(
    asset_id: UUID,
    request: Request,
    principal: Viewer,
    runtime: RuntimeDep,
    request_id: RequestId,
    classification: Annotated[str, Query(max_length=512, pattern=cls.NAME_PATTERN)],
    column: Annotated[str | None, Query(min_length=1, max_length=cls.MAX_COLUMN_BYTES, pattern=r"^[^\x00]*$")] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Remove one classification from the asset (``column`` absent) or a column, whatever carries it
    (by hand, a rule, propagation); what it propagated is removed downstream unless another path
    carries it. It sticks: rules and propagation never put it back there (classifying by hand does)."""
    subject = await _place_exists(runtime, principal, asset_id, column, classification)
    payload = {"asset_id": str(asset_id), "column": column, "classification": classification}
    event = NewEvent(principal.tenant_id, subject, CLASSIFICATION_REMOVE, payload, principal.actor, request_id)
    return await writes.write(runtime, request, principal, event, payload, _render(principal.tenant_id, asset_id))


async def _place_exists(
    runtime: Any, principal: Principal, asset_id: UUID, column: str | None, classification: str
) -> str:
    """The asset's subject; 404 unless the place carries the classification (checked again when applied)."""
    async with runtime.db.tenant(principal.tenant_id) as conn:
        asset = require_asset(await store_assets.get(conn, principal.tenant_id, asset_id), asset_id)
        await _may_govern(conn, principal, asset)
        if not await store.at(conn, principal.tenant_id, asset_id, column, classification):
            where = f"column {column!r} of asset" if column is not None else "asset"
            raise NotFound(f"{where} {asset_id} has no classification {classification}")
    return asset.qualified_name
