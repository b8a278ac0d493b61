"""``PUT`` takes back what ``GET`` returned: read-only members are accepted when unchanged.

A client that reads a document, edits it and sends it back must not have to strip what it did not
write (``asset_id``, ``version``, timestamps, ``history`` …). Those members are optional in the
``PUT`` models; :func:`changed_read_only` compares the ones sent with the stored document, and the
router refuses any difference with 422 naming the member. Unknown members are still refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lily.domain.assets import AssetReplace
from lily.domain.tenants import TenantConfig

ASSET_READ_ONLY = (
    "asset_id",
    "qualified_name",
    "placeholder",
    "source",
    "has_active_source",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "classifications",
)


class AssetReplaceDocument(AssetReplace):
    """``PUT /metadata/{id}``: the mutable fields, plus (optionally) the read-only ones as ``GET`` gave them."""

    asset_id: UUID | None = Field(default=None, description="Read-only: must be the asset's id")
    qualified_name: str | None = Field(default=None, description="Read-only: the identity, never changed")
    placeholder: bool | None = Field(default=None, description="Read-only")
    source: str | None = Field(default=None, description="Read-only: which source last wrote the asset")
    has_active_source: bool | None = Field(default=None, description="Read-only")
    version: int | None = Field(
        default=None, description="Read-only: must be the current version (then it acts as If-Match)"
    )
    created_at: datetime | None = Field(default=None, description="Read-only")
    updated_at: datetime | None = Field(default=None, description="Read-only")
    deleted_at: datetime | None = Field(default=None, description="Read-only")
    classifications: list[str] | None = Field(
        default=None, description="Read-only: set through /metadata/governance/classification"
    )
    history: dict[str, Any] | None = Field(default=None, description="Read-only: a page of history as GET gave it")

    def mutable(self) -> dict[str, Any]:
        """The fields the replace writes, as JSON."""
        return self.model_dump(mode="json", include=set(AssetReplace.model_fields))


def changed_read_only(given: BaseModel, stored: dict[str, Any], names: tuple[str, ...]) -> list[dict[str, str]]:
    """``{"field", "message"}`` for each read-only member sent that differs from ``stored``."""
    out = []
    for name in names:
        if name not in given.model_fields_set:
            continue
        value, current = getattr(given, name), stored.get(name)
        if isinstance(current, str) and isinstance(value, (UUID, datetime)):
            current = type(value).fromisoformat(current) if isinstance(value, datetime) else UUID(current)
        if value != current:
            out.append({"field": name, "message": f"{name} is read-only; it is {_show(current)}, not {_show(value)}"})
    return out


def _show(value: Any) -> str:
    return "null" if value is None else repr(str(value) if isinstance(value, (UUID, datetime)) else value)


class TenantConfigDocumentIn(TenantConfig):
    """``PUT /tenants/{id}/config``: the configuration itself, or the document ``GET`` returned
    (``{tenant_id, name, created_at, config}``) with the read-only members unchanged."""

    tenant_id: str | None = Field(default=None, description="Read-only")
    name: str | None = Field(default=None, description="Read-only")
    created_at: datetime | None = Field(default=None, description="Read-only")
    config: TenantConfig | None = Field(default=None, description="The configuration, as GET nests it")

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _one_place(self) -> Self:
        if self.config is not None and set(TenantConfig.model_fields) & self.model_fields_set:
            raise ValueError("give the configuration either under config or at the top level, not both")
        return self

    def effective(self) -> TenantConfig:
        if self.config is not None:
            return self.config
        return TenantConfig.model_validate(self.model_dump(include=set(TenantConfig.model_fields)))


TENANT_READ_ONLY = ("tenant_id", "name", "created_at")
