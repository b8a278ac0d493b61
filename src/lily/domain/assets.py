"""Assets: what a client may send, what Lily answers, and how a change becomes a new version."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID, uuid5

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

# PostgreSQL text and jsonb cannot hold U+0000: refuse it here (422) rather than fail in the store.
NO_NUL = r"^[^\x00]*$"
QualifiedName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1024, pattern=NO_NUL)]
AssetType = Annotated[
    # The pattern is checked on the text as sent (before lower-casing), so it admits capitals.
    str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256, pattern=NO_NUL)]
MAX_ATTRIBUTE_DEPTH = 32


def _check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    """Free JSON, but storable: no U+0000, no NaN or infinities (not JSON), bounded nesting."""

    def walk(node: Any, path: str, depth: int) -> None:
        if depth > MAX_ATTRIBUTE_DEPTH:
            raise ValueError(f"{path} nests deeper than {MAX_ATTRIBUTE_DEPTH} levels")
        if isinstance(node, dict):
            for key, child in node.items():
                if "\x00" in key:
                    raise ValueError(f"a key in {path} contains U+0000")
                walk(child, f"{path}.{key}", depth + 1)
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}[{i}]", depth + 1)
        elif isinstance(node, str) and "\x00" in node:
            raise ValueError(f"{path} contains U+0000")
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{path} is {node}, which JSON cannot represent")

    walk(value, "attributes", 1)
    return value


# Fields a client may set; qualified_name is the identity (and the event log's subject), never changed.
MUTABLE_FIELDS = ("type", "name", "description", "owners", "tags", "attributes")
_DEFAULTS: dict[str, Any] = {"description": None, "owners": [], "tags": [], "attributes": {}}


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


class AssetFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512, pattern=NO_NUL)] | None
    ) = None
    description: Annotated[str, StringConstraints(max_length=65536, pattern=NO_NUL)] | None = None
    owners: list[Label] = Field(default_factory=list, max_length=256)
    tags: list[Label] = Field(default_factory=list, max_length=256)
    attributes: dict[str, Any] = Field(default_factory=dict)

    _dedupe = field_validator("owners", "tags")(_unique)
    _storable = field_validator("attributes")(_check_attributes)


class AssetIn(AssetFields):
    """``POST /metadata``: create, or update the asset with the same qualified name."""

    qualified_name: QualifiedName
    type: AssetType


class AssetReplace(AssetFields):
    """``PUT /metadata/{id}``: replaces every mutable field; omitted ones return to their defaults."""

    type: AssetType


class Asset(BaseModel):
    asset_id: UUID
    qualified_name: str
    type: str
    name: str
    description: str | None
    owners: list[str]
    tags: list[str]
    attributes: dict[str, Any]
    placeholder: bool = False
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class AssetVersion(BaseModel):
    version: int
    action: str
    changes: dict[str, Any]
    snapshot: dict[str, Any]
    actor: str
    request_id: str | None
    event_id: UUID | None
    origin: dict[str, Any] | None = None
    changed_at: datetime


def to_document(row: dict[str, Any]) -> dict[str, Any]:
    """An asset row as the JSON document kept in its version history (and returned by the API)."""
    return {
        "asset_id": str(row["asset_id"]),
        "qualified_name": row["qualified_name"],
        "type": row["type"],
        "name": row["name"],
        "description": row["description"],
        "owners": list(row["owners"]),
        "tags": list(row["tags"]),
        "attributes": row["attributes"],
        "placeholder": row["placeholder"],
        "version": row["version"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "deleted_at": row["deleted_at"].isoformat() if row["deleted_at"] else None,
    }


# Asset ids derive from (tenant, qualified name): every writer computes the same id for a name, so a
# lineage placeholder and the real asset written concurrently by another worker converge on one row.
_ASSET_NAMESPACE = UUID("6c1f4c57-0b8e-4c8a-9d0f-4c1f1a7e5e11")


def asset_id_for(tenant_id: str, qualified_name: str) -> UUID:
    return uuid5(_ASSET_NAMESPACE, f"{tenant_id}\x00{qualified_name}")


def default_name(qualified_name: str) -> str:
    """The last segment of a qualified name: ``pg://db/public.orders`` → ``orders``."""
    parts = [p for p in re.split(r"[/.:]", qualified_name) if p]
    return parts[-1] if parts else qualified_name


def merge(current: dict[str, Any] | None, payload: dict[str, Any], *, replace: bool) -> dict[str, Any]:
    """The asset's mutable state after ``payload``.

    An upsert changes only the fields the client sent (attributes merge key by key); a replace resets
    the ones it left out.
    """
    keep_current = current is not None and not replace
    state = {f: current[f] for f in MUTABLE_FIELDS} if keep_current and current else dict(_DEFAULTS)
    state.update({k: v for k, v in payload.items() if k in MUTABLE_FIELDS})
    if keep_current and current and "attributes" in payload:
        # An upsert merges attributes key by key (a null value removes the key), so sources that each
        # own some attributes (a crawler, OpenLineage, an enrichment hook) do not erase each other's.
        merged = {**current["attributes"], **payload["attributes"]}
        state["attributes"] = {k: v for k, v in merged.items() if v is not None}
    if not state.get("name"):
        qualified_name = payload.get("qualified_name") or (current or {}).get("qualified_name", "")
        state["name"] = default_name(qualified_name)
    return state


def diff(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """``{field: {"from": old, "to": new}}`` for each mutable field that differs."""
    if before is None:
        return {f: {"from": None, "to": after[f]} for f in MUTABLE_FIELDS}
    return {f: {"from": before[f], "to": after[f]} for f in MUTABLE_FIELDS if before.get(f) != after.get(f)}


def etag(asset_id: UUID | str, version: int) -> str:
    return f'"{asset_id}:{version}"'


def parse_if_match(value: str, asset_id: UUID | str) -> int:
    """The version named by an ``If-Match`` header; ``*`` means any (returns 0)."""
    value = value.strip()
    if value == "*":
        return 0
    value = value.removeprefix("W/").strip('"')
    prefix = f"{asset_id}:"
    if not value.startswith(prefix) or not value[len(prefix) :].isdigit():
        return -1  # an ETag of another asset, or garbage: matches no version
    return int(value[len(prefix) :])
