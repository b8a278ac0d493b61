"""``/changes``: the tenant's change events in commit order, for consumers that pull (viewers).

The order, the cursor and the waiting are :mod:`lily.changes.feed`'s; this module maps them onto HTTP.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, StringConstraints

from lily.api import pagination
from lily.api.deps import RuntimeDep, Viewer
from lily.api.errors import problem_responses
from lily.api.responses import FastJSON
from lily.changes import feed

router = APIRouter(prefix="/changes", tags=["changes"])


class ChangeEventOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: UUID
    type: str
    tenant_id: str
    asset_id: UUID | None
    qualified_name: str | None
    version: int | None
    changes: dict[str, Any]
    actor: str
    occurred_at: datetime
    origin: dict[str, Any]


class ChangePage(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: list[ChangeEventOut]
    next_cursor: str


def _document(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "type": row["type"],
        "tenant_id": row["tenant_id"],
        "asset_id": row["asset_id"],
        "qualified_name": row["qualified_name"],
        "version": row["version"],
        "changes": row["changes"],
        "actor": row["actor"],
        "occurred_at": row["occurred_at"],
        "origin": row["origin"],
    }


@router.get("", response_model=ChangePage, responses=problem_responses())
async def list_changes(
    principal: Viewer,
    runtime: RuntimeDep,
    cursor: pagination.Cursor = None,
    types: Annotated[
        list[Annotated[str, StringConstraints(max_length=2000)]],
        Query(
            max_length=feed.MAX_TYPES,
            description="Types to include: 'asset.updated', 'asset.*', '*'; repeated or comma-separated",
        ),
    ] = [],  # noqa: B006
    wait: Annotated[
        float,
        Query(ge=0, le=feed.MAX_WAIT_SECONDS, description="Seconds to wait for an event when none is there yet"),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Change events after ``cursor`` (from the oldest retained without one), in commit order: a page
    never skips an event that commits later. ``next_cursor`` is always given: pass it back to go on,
    also after an empty page. Events about assets the caller may not read are left out."""
    position = pagination.decode(cursor, valid=feed.valid_position)
    page = await feed.read(
        runtime.db,
        runtime.change_waker,
        principal.tenant_id,
        tuple(position) if position is not None else None,
        types=types,
        limit=limit,
        wait=wait,
    )
    return FastJSON({"items": [_document(r) for r in page.rows], "next_cursor": pagination.encode(list(page.next))})
