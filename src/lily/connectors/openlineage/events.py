"""OpenLineage events as the spec (https://openlineage.io/spec/2-0-2/OpenLineage.json) defines them.

Only what Lily reads is typed: identity (namespace, name, runId), event type and time, and the facets
that become Lily fields (``schema``, ``columnLineage``, ``documentation``, ``ownership``, and a job's
``lily`` facet: ``{"blocks_propagation": ["PII.*"]}``). Everything else
is allowed through untyped, as the spec's ``additionalProperties`` asks, so producers that add custom
facets are never refused. Validation errors name the field the way the API does (``run.runId``,
``outputs[0].facets.schema.fields[2].name``; ``[3].job`` inside a batch).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from lily.domain.errors import Invalid
from lily.domain.lineage import MAX_REFS
from lily.domain.storable import MAX_JSON_DEPTH, Unstorable, check_column_bytes, check_key_bytes, storable

EventKind = Literal["RunEvent", "DatasetEvent", "JobEvent"]
EventType = Literal["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]

# Lily's qualified names are at most 1024 characters and are ``{namespace}/{name}``.
MAX_QUALIFIED_NAME = 1024
MAX_DATASETS = MAX_REFS  # per inputs / outputs list, as for Lily's own lineage writes
MAX_BATCH = 1000  # events per /lineage/batch request
MAX_FIELDS = 10_000  # schema fields (after flattening nested ones), column lineage entries
# Facets are kept under attributes.openlineage.facets (three levels down), within attributes' own bound.
MAX_EVENT_DEPTH = MAX_JSON_DEPTH

Text = Annotated[str, StringConstraints(max_length=65536)]
Namespace = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUALIFIED_NAME)]
ColumnName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1024), AfterValidator(check_column_bytes)
]


def _none_is_empty(value: Any) -> Any:
    # Producers send ``"inputs": null`` and ``"facets": null`` as often as they leave them out.
    return [] if value is None else value


def _none_is_empty_dict(value: Any) -> Any:
    return {} if value is None else value


class _Open(BaseModel):
    """Spec objects allow additional properties; keep them (they are stored with the facets)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---------------------------------------------------------------- facets Lily reads


class SchemaField(_Open):
    name: ColumnName
    type: Text | None = None
    description: Text | None = None
    fields: list[SchemaField] = Field(default_factory=list, max_length=MAX_FIELDS)

    _nulls = field_validator("fields", mode="before")(_none_is_empty)


class SchemaFacet(_Open):
    fields: list[SchemaField] = Field(default_factory=list, max_length=MAX_FIELDS)

    _nulls = field_validator("fields", mode="before")(_none_is_empty)


class InputField(_Open):
    namespace: Namespace
    name: Name
    field: ColumnName
    transformations: list[dict[str, Any]] = Field(default_factory=list, max_length=100)

    _nulls = field_validator("transformations", mode="before")(_none_is_empty)

    @property
    def qualified_name(self) -> str:
        return qualified_name(self.namespace, self.name)


class ColumnLineageField(_Open):
    # At most MAX_REFS inputs per column: what Lily's lineage accepts for one downstream column.
    inputFields: list[InputField] = Field(max_length=MAX_REFS)  # the spec's camelCase
    transformationDescription: Text | None = None
    transformationType: Text | None = None


class ColumnLineageFacet(_Open):
    fields: dict[str, ColumnLineageField] = Field(max_length=MAX_FIELDS)

    @field_validator("fields")
    @classmethod
    def _column_names(cls, fields: dict[str, ColumnLineageField]) -> dict[str, ColumnLineageField]:
        for name in fields:
            if not name.strip() or len(name) > 1024:
                raise ValueError(f"column name {name[:40]!r} must have 1 to 1024 characters")
            check_column_bytes(name)
        return fields


class DocumentationFacet(_Open):
    description: Text


class Owner(_Open):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
    type: str | None = None


class OwnershipFacet(_Open):
    owners: list[Owner] = Field(default_factory=list, max_length=256)


class DatasetFacets(_Open):
    schema_: SchemaFacet | None = Field(default=None, alias="schema")
    columnLineage: ColumnLineageFacet | None = None
    documentation: DocumentationFacet | None = None
    ownership: OwnershipFacet | None = None


class LilyJobFacet(_Open):
    """Lily's own job facet: what the job stops from propagating along the lineage it writes (an
    anonymising or hashing step), as ``attributes["lily.blocks_propagation"]`` does for a job written
    through the API. ``{"_deleted": true}`` (the spec's removal) lifts the block."""

    blocks_propagation: (
        list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]] | None
    ) = Field(default=None, max_length=100)
    deleted: bool = Field(default=False, alias="_deleted")


class JobFacets(_Open):
    documentation: DocumentationFacet | None = None
    ownership: OwnershipFacet | None = None
    lily: LilyJobFacet | None = None


# ---------------------------------------------------------------- the core objects


class _Named(_Open):
    namespace: Namespace
    name: Name

    @model_validator(mode="after")
    def _fits(self) -> _Named:
        if len(self.namespace) + 1 + len(self.name) > MAX_QUALIFIED_NAME:
            raise ValueError(f"namespace and name together exceed {MAX_QUALIFIED_NAME - 1} characters")
        check_key_bytes(qualified_name(self.namespace, self.name))  # the asset's qualified name, indexed
        return self

    @property
    def qualified_name(self) -> str:
        return qualified_name(self.namespace, self.name)


class Dataset(_Named):
    facets: DatasetFacets = Field(default_factory=DatasetFacets)

    _nulls = field_validator("facets", mode="before")(_none_is_empty_dict)


class InputDataset(Dataset):
    inputFacets: dict[str, Any] | None = None


class OutputDataset(Dataset):
    outputFacets: dict[str, Any] | None = None


class Job(_Named):
    facets: JobFacets = Field(default_factory=JobFacets)

    _nulls = field_validator("facets", mode="before")(_none_is_empty_dict)


class Run(_Open):
    runId: UUID
    facets: dict[str, Any] = Field(default_factory=dict)

    _nulls = field_validator("facets", mode="before")(_none_is_empty_dict)


class _Event(_Open):
    eventTime: datetime
    producer: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    schemaURL: Annotated[str, StringConstraints(min_length=1, max_length=2048)]

    @field_validator("eventTime", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # The spec's date-time is a string; pydantic would otherwise read a number as epoch seconds.
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 date-time string")
        return value

    @field_validator("eventTime")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # The spec asks for an offset; producers that leave it out mean UTC in practice.
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)

    @field_validator("schemaURL")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be the http(s) URL of the OpenLineage schema the event follows")
        return value


class RunEvent(_Event):
    eventType: EventType  # optional in the spec, required here: it is the run's state
    run: Run
    job: Job
    inputs: list[InputDataset] = Field(default_factory=list, max_length=MAX_DATASETS)
    outputs: list[OutputDataset] = Field(default_factory=list, max_length=MAX_DATASETS)

    _nulls = field_validator("inputs", "outputs", mode="before")(_none_is_empty)


class DatasetEvent(_Event):
    dataset: Dataset


class JobEvent(_Event):
    job: Job
    inputs: list[InputDataset] = Field(default_factory=list, max_length=MAX_DATASETS)
    outputs: list[OutputDataset] = Field(default_factory=list, max_length=MAX_DATASETS)

    _nulls = field_validator("inputs", "outputs", mode="before")(_none_is_empty)


Event = RunEvent | DatasetEvent | JobEvent

_MODELS: dict[str, type[RunEvent] | type[DatasetEvent] | type[JobEvent]] = {
    "RunEvent": RunEvent,
    "DatasetEvent": DatasetEvent,
    "JobEvent": JobEvent,
}


def qualified_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


# ---------------------------------------------------------------- parsing with named fields


def _field(loc: tuple[Any, ...] | list[Any], prefix: str) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def kind_of(raw: dict[str, Any]) -> EventKind:
    """Which event ``raw`` is: named by its schemaURL's fragment (``#/$defs/RunEvent``; older
    producers wrote ``#/definitions/RunEvent``), else told by its shape (a ``run`` or ``eventType`` makes
    a RunEvent, a ``dataset`` a DatasetEvent, anything else is read as a JobEvent and must name a job)."""
    url = raw.get("schemaURL")
    fragment = urlsplit(url).fragment if isinstance(url, str) else ""
    named = fragment.rstrip("/").rsplit("/", 1)[-1]
    if named in _MODELS:
        return named  # type: ignore[return-value]
    if named:
        raise Invalid(f"schemaURL names {named!r}; expected RunEvent, DatasetEvent or JobEvent", field="schemaURL")
    if "run" in raw or "eventType" in raw:
        return "RunEvent"
    if "dataset" in raw:
        return "DatasetEvent"
    return "JobEvent"


def parse_event(raw: Any, prefix: str = "") -> Event:
    """Validate one event; raises :class:`Invalid` naming every bad field (prefixed in a batch)."""
    if not isinstance(raw, dict):
        raise Invalid("an OpenLineage event is a JSON object", field=prefix or "body")
    try:
        kind = kind_of(raw)
    except Invalid as err:
        raise Invalid(err.detail, field=_field(("schemaURL",), prefix)) from None
    try:
        # Names, facets and all: the event is stored (as assets, lineage and facets), so what PostgreSQL
        # cannot hold (U+0000, lone surrogates, integers beyond 64 bits) is refused here, naming it.
        storable(raw, max_depth=MAX_EVENT_DEPTH)
    except Unstorable as exc:
        field = _field((), prefix) + ("" if exc.path.startswith("[") or not prefix else ".") + exc.path
        raise Invalid(f"{field or 'body'}: {exc.message}", field=field or "body") from None
    try:
        return _MODELS[kind].model_validate(raw)
    except ValidationError as exc:
        errors = [{"field": _field(e["loc"], prefix), "message": e["msg"]} for e in exc.errors()[:20]]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise Invalid(f"invalid {kind}: {summary}", errors=errors) from None


def parse_batch(raw: Any) -> list[Event]:
    """Validate every event of a batch before any is used; one error lists all bad ones by index."""
    if not isinstance(raw, list):
        raise Invalid("a batch is a JSON array of OpenLineage events", field="body")
    if not raw:
        raise Invalid("the batch is empty", field="body")
    if len(raw) > MAX_BATCH:
        raise Invalid(f"{len(raw)} events in one batch; at most {MAX_BATCH}", field="body")
    events: list[Event] = []
    errors: list[dict[str, Any]] = []
    bad: list[int] = []
    for i, item in enumerate(raw):
        try:
            events.append(parse_event(item, prefix=f"[{i}]"))
        except Invalid as err:
            bad.append(i)
            errors.extend(err.extra.get("errors") or [{"field": f"[{i}]", "message": err.detail}])
    if bad:
        listed = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        raise Invalid(
            f"{len(bad)} invalid event(s) at index {listed}; nothing was applied: "
            f"{errors[0]['field']}: {errors[0]['message']}",
            errors=errors[:50],
            indexes=bad[:100],
        )
    return events
