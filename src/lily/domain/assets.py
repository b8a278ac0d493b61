"""Assets: what a client may send, what Lily answers, and how a change becomes a new version."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Annotated, Any, get_args, get_origin, get_type_hints
from uuid import UUID, uuid5

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from lily.domain import storable as st

# PostgreSQL text and jsonb cannot hold U+0000 (nor lone surrogates, nor keys over the btree limit):
# refuse them here (422) rather than fail in the store. The rules are in lily.domain.storable.
NO_NUL = st.NO_NUL
QualifiedName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=1024, pattern=NO_NUL),
    AfterValidator(st.check_key_bytes),
]
AssetType = Annotated[
    # The pattern is checked on the text as sent (before lower-casing), so it admits capitals.
    str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
]
Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=256, pattern=NO_NUL),
    AfterValidator(st.check_text),
]
MAX_ATTRIBUTE_DEPTH = st.MAX_JSON_DEPTH
Text = Annotated[str, AfterValidator(st.check_text)]


def _check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    """Free JSON, but storable (see :func:`lily.domain.storable.storable`): the error's ``path`` names
    the member inside ``attributes``."""
    return st.storable(value)


# Fields a client may set; qualified_name is the identity (and the event log's subject), never changed.
MUTABLE_FIELDS = ("type", "name", "description", "owners", "tags", "attributes")
_DEFAULTS: dict[str, Any] = {"description": None, "owners": [], "tags": [], "attributes": {}}


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


class AssetFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: (
        Annotated[
            str,
            StringConstraints(strip_whitespace=True, min_length=1, max_length=512, pattern=NO_NUL),
            AfterValidator(st.check_text),
        ]
        | None
    ) = None
    description: (
        Annotated[str, StringConstraints(max_length=65536, pattern=NO_NUL), AfterValidator(st.check_text)] | None
    ) = None
    owners: list[Label] = Field(default_factory=list, max_length=256)
    tags: list[Label] = Field(default_factory=list, max_length=256)
    attributes: st.JSONObject = Field(default_factory=dict)

    _dedupe = field_validator("owners", "tags")(_unique)
    _storable = field_validator("attributes")(_check_attributes)


class AssetIn(AssetFields):
    """``POST /metadata``: create, or update the asset with the same qualified name."""

    qualified_name: QualifiedName
    type: AssetType


class AssetReplace(AssetFields):
    """``PUT /metadata/{id}``: replaces every mutable field; omitted ones return to their defaults."""

    type: AssetType


@dataclass(slots=True)
class Asset:
    """An asset's current state: the row the store reads and writes, the pipeline changes, and the API
    answers (through :func:`to_document`). The store derives its column list, its ``jsonb_to_recordset``
    record and its upsert from these fields, so a new field needs the schema, this class and a new
    version of the point read's SQL function (``lily_read_asset``; a test holds its columns to these).
    A plain slots dataclass, not a pydantic model: rows read from the database are valid already, and
    the worker builds several per event (a dataclass costs ~1 µs, ``model_construct`` ~8 µs).
    """

    asset_id: UUID
    qualified_name: str
    type: str
    name: str
    description: str | None
    owners: list[str]
    tags: list[str]
    attributes: dict[str, Any]
    placeholder: bool
    # Which source last wrote the asset (``api``, ``bulk``, ``openlineage``, ``connector:<id>``,
    # ``propagation`` …), and whether a source that reports its own changes feeds it (see
    # :func:`lily.domain.versions.is_active_source`). Core data: propagation reads it.
    source: str
    has_active_source: bool
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    # Every classification of the asset and of its columns, parents included (``PII.Email`` gives ``PII``
    # and ``PII.Email``), sorted. Read-only: kept by the classification handler from its own table (see
    # :mod:`lily.pipeline.apply.classification`), never by an asset write, so the upsert leaves it alone.
    classifications: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    def state(self) -> dict[str, Any]:
        """The mutable fields, as :func:`merge` and :func:`diff` take them."""
        return {f: getattr(self, f) for f in MUTABLE_FIELDS}

    def evolve(self, **updates: Any) -> Asset:
        """A copy with ``updates`` applied; quicker than ``dataclasses.replace``, which goes through
        ``fields()`` and keyword arguments on every call."""
        new = _clone(self)
        for name, value in updates.items():
            setattr(new, name, value)
        return new


ASSET_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Asset))


def _json_expression(name: str, hint: Any) -> str:
    """Python source spelling field ``name`` of ``a`` as a JSON value."""
    kinds = set(get_args(hint)) - {type(None)} or {hint}
    value = f"a.{name}"
    if UUID in kinds:
        spelled = f"str({value})"
    elif datetime in kinds:
        spelled = f"{value}.isoformat()"
    elif any(get_origin(k) is list for k in kinds):
        spelled = f"list({value})"
    else:
        return value
    return f"(None if {value} is None else {spelled})" if type(None) in get_args(hint) else spelled


def _document_function() -> Callable[[Asset], dict[str, Any]]:
    # Generated from the fields once, like dataclasses' own __init__: as quick as a hand-written dict
    # (a loop over the fields costs ~50% more, and this runs for every version the worker writes), yet
    # a new field needs no edit here.
    items = ", ".join(f"{name!r}: {_json_expression(name, hint)}" for name, hint in get_type_hints(Asset).items())
    namespace: dict[str, Any] = {}
    exec(f"def to_document(a):\n    return {{{items}}}\n", {}, namespace)
    function: Callable[[Asset], dict[str, Any]] = namespace["to_document"]
    return function


_to_document = _document_function()


def _clone_function() -> Callable[[Asset], Asset]:
    # Generated like _document_function: positional arguments from the fields, so a new field needs no edit.
    args = ", ".join(f"a.{name}" for name in ASSET_FIELDS)
    namespace: dict[str, Any] = {}
    exec(f"def clone(a):\n    return Asset({args})\n", {"Asset": Asset}, namespace)
    function: Callable[[Asset], Asset] = namespace["clone"]
    return function


_clone = _clone_function()


def to_document(asset: Asset) -> dict[str, Any]:
    """An asset as the JSON document kept in its version history (and returned by the API)."""
    return _to_document(asset)


# Asset ids derive from (tenant, qualified name): every writer computes the same id for a name, so a
# lineage placeholder and the real asset written concurrently by another worker converge on one row.
_ASSET_NAMESPACE = UUID("6c1f4c57-0b8e-4c8a-9d0f-4c1f1a7e5e11")


def asset_id_for(tenant_id: str, qualified_name: str) -> UUID:
    return uuid5(_ASSET_NAMESPACE, f"{tenant_id}\x00{qualified_name}")


def default_name(qualified_name: str) -> str:
    """The last segment of a qualified name: ``pg://db/public.orders`` → ``orders``."""
    parts = [p for p in re.split(r"[/.:]", qualified_name) if p]
    return parts[-1] if parts else qualified_name


def merge(current: Mapping[str, Any] | None, payload: Mapping[str, Any], *, replace: bool) -> dict[str, Any]:
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
