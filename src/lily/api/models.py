"""What the API answers, as pydantic models for the OpenAPI document.

Routes on hot paths return an already-serialised ``FastJSON`` and name these as ``response_model`` for
the document only: FastAPI does not re-validate a returned ``Response``, and validating a 20-version
history costs about half a millisecond per read (``bench/get_asset.py``). The schemathesis test checks
that what is answered conforms to them.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints
from uuid import UUID

from fastapi import Header
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from lily.domain.assets import Asset
from lily.domain.storable import IDEMPOTENCY_KEY_PATTERN


def _iso_only(value: Any) -> Any:
    # Pydantic also takes Unix times ("0.5") for a datetime; the documented format is ISO 8601 only.
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    ):
        raise ValueError("give an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]
"""A date-time given in ISO 8601 only (query parameters and bodies)."""

# Declared on every write so it is validated (an index key: printable ASCII, at most 255) and documented;
# ``lily.api.writes`` reads it from the request.
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="A retry with the same key answers what the first request did; another body with it is 409",
    ),
]


class _Out(BaseModel):
    # Answers may gain members; clients must ignore the ones they do not know.
    model_config = ConfigDict(extra="allow")


def _asset_document() -> type[_Out]:
    """The asset's document, derived from the fields of :class:`lily.domain.assets.Asset` (what
    ``to_document`` answers): a new asset field shows here with no edit."""
    defaults = {f.name: f.default for f in dataclasses.fields(Asset) if f.default is not dataclasses.MISSING}
    members: dict[str, Any] = {name: (hint, defaults.get(name, ...)) for name, hint in get_type_hints(Asset).items()}
    model: type[_Out] = create_model("AssetDocument", __base__=_Out, __doc__="An asset.", **members)
    return model


if TYPE_CHECKING:
    AssetDocument = _Out
else:
    AssetDocument = _asset_document()


class AssetVersionOut(_Out):
    version: int
    action: str
    changes: dict[str, Any]
    snapshot: dict[str, Any]
    actor: str
    request_id: str | None
    event_id: UUID | None
    origin: dict[str, Any] | None
    changed_at: datetime


class HistoryPage(_Out):
    items: list[AssetVersionOut]
    next_cursor: str | None = Field(description="Pass as history_cursor for older versions")


class AssetWithHistory(AssetDocument):
    """``GET /metadata/{id}``: the asset and a page of its versions, newest first."""

    history: HistoryPage


class AssetPage(_Out):
    items: list[AssetDocument]
    next_cursor: str | None


class AuditEntry(_Out):
    audit_id: int
    action: str
    actor: str


class AuditPage(_Out):
    items: list[AuditEntry]
    next_cursor: str | None


class Accepted(_Out):
    """202: the write is in the log; follow ``status_url``."""

    event_id: UUID
    status: Literal["accepted"]
    status_url: str


class EventStatus(_Out):
    event_id: UUID
    state: Literal["accepted", "applied", "failed", "dead_lettered"]
    kind: str
    subject: str
    source: str | None
    attempts: int
    error: Any
    result: Any
    accepted_at: datetime
    applied_at: datetime | None
    accept_to_apply_seconds: float | None
    replay_of: UUID | None
    dead_letter: dict[str, Any] | None


class DeadLetter(_Out):
    event_id: UUID
    subject: str
    kind: str
    error: Any
    attempts: int
    state: Literal["open", "replayed", "discarded"]
    accepted_at: datetime | None
    dead_lettered_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    replayed_as: UUID | None
    replay_of: UUID | None
    payload: Any


class DeadLetterPage(_Out):
    items: list[DeadLetter]
    next_cursor: str | None


class Replayed(_Out):
    event_id: UUID
    replay_event_id: UUID
    status_url: str


class ReplayReport(_Out):
    replayed: list[Replayed]
    skipped: list[dict[str, Any]]


class TenantConfigDocument(_Out):
    """``GET /tenants/{id}/config``; ``PUT`` takes it back (read-only members must be unchanged)."""

    tenant_id: str
    name: str
    created_at: datetime
    config: dict[str, Any]


class Source(_Out):
    kind: str
    id: str
    name: str
    created_at: datetime


class TenantSources(_Out):
    tenant_id: str
    inbound: list[Source]
    outbound: list[Source]


class BulkReceipt(_Out):
    job_id: UUID
    status_url: str
    total: int
    rejected: int
    replayed: bool


class BulkStatus(_Out):
    job_id: UUID
    state: Literal["queued", "running", "succeeded", "partial", "failed"]


class LineageWritten(_Out):
    """What a lineage write applied (edges and columns recorded, placeholders created)."""


class TokenValidation(_Out):
    valid: bool
    claims: dict[str, Any]


class MarquezGraph(_Out):
    graph: list[dict[str, Any]]


# The answers every write through the log may give besides its own: 202 when applying takes longer
# than the wait (or ``Prefer: respond-async``).
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted: in the log, not applied yet; follow status_url", "model": Accepted},
}
