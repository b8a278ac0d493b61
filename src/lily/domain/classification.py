"""Classification: dotted names from a tenant taxonomy on assets and their columns, and the pure rules
about them (names, parents, blocking patterns, what the API and the events carry).

A name is 1-8 dot-separated segments (``PII.Email``); its parents are its prefixes (``PII``). The
built-in taxonomy below is every tenant's; a steward adds more names per tenant (stored, see
``store.classifications``). A parent matches its children everywhere: the inventory, search's
``classification=`` filter and access-policy selectors read ``assets.classifications``, which holds
every name of an asset and its columns with their parents expanded (:func:`closure`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from lily.domain import storable as st

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}(\.[A-Za-z][A-Za-z0-9_]{0,63}){0,7}$"
_NAME = re.compile(NAME_PATTERN)
MAX_NAMES = 32  # per request: a column with more is a mistake, not a classification
MAX_COLUMN_BYTES = 1024  # the tables' CHECK
SOURCES = ("manual", "rule", "propagated", "external")
Source = Literal["manual", "rule", "propagated", "external"]

BUILT_IN: dict[str, str] = {
    "PII": "Personally identifiable information",
    "PII.Email": "An e-mail address",
    "PII.Phone": "A telephone number",
    "PII.NationalId": "A national identity number (SSN, NIN, …)",
    "PII.CreditCard": "A payment card number",
    "PII.IBAN": "A bank account number (IBAN)",
    "PII.IPAddress": "An IP address",
    "PII.DateOfBirth": "A date of birth",
    "PII.Name": "A person's name",
    "PII.Address": "A postal address",
    "GDPR": "Data the GDPR governs",
    "GDPR.Personal": "Personal data (GDPR art. 4)",
    "GDPR.SpecialCategory": "Special categories of personal data (GDPR art. 9)",
    "Sensitivity": "How sensitive the data is",
    "Sensitivity.Public": "May be published",
    "Sensitivity.Internal": "For the organisation only",
    "Sensitivity.Confidential": "For those who need it",
    "Sensitivity.Restricted": "For named people only",
}
BUILT_IN_ROOTS = frozenset(name.split(".", 1)[0] for name in BUILT_IN)


def is_name(value: str) -> bool:
    return _NAME.match(value) is not None


def parents(name: str) -> list[str]:
    """``A.B.C`` → ``["A", "A.B", "A.B.C"]``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def closure(names: Iterable[str]) -> list[str]:
    """Every name with its parents, sorted and distinct (what ``assets.classifications`` holds)."""
    return sorted({p for name in names for p in parents(name)})


def under(name: str, parent: str) -> bool:
    """Whether ``name`` is ``parent`` or one of its children (``PII.Email`` is under ``PII``)."""
    return name == parent or name.startswith(parent + ".")


def blocked(name: str, patterns: Iterable[str]) -> bool:
    """Whether a blocking pattern stops ``name``: ``*`` stops all, ``PII.*`` and ``PII`` stop ``PII`` and
    every child of it, ``PII.Email`` stops that name and its children."""
    for pattern in patterns:
        if not isinstance(pattern, str):
            continue
        if pattern == "*" or under(name, pattern.removesuffix(".*")):
            return True
    return False


def blocked_roots(patterns: Iterable[str]) -> list[str] | None:
    """The names :func:`blocked` stops, as the roots they are under (``PII.*`` → ``PII``), for SQL to narrow
    a read with; None when one pattern (``*``) stops every name."""
    roots: list[str] = []
    for pattern in patterns:
        if pattern == "*":
            return None
        roots.append(pattern.removesuffix(".*"))
    return sorted(set(roots))


BLOCKS_PROPAGATION = "lily.blocks_propagation"  # the flat attribute key (OpenLineage's ``lily`` job facet sets it)


def blocking_patterns(attributes: dict[str, Any] | None) -> list[str]:
    """What a job (process) asset blocks: ``attributes["lily.blocks_propagation"]`` or the nested
    ``attributes["lily"]["blocks_propagation"]`` (both spellings are common in hand-written JSON)."""
    if not attributes:
        return []
    found: list[str] = []
    flat = attributes.get(BLOCKS_PROPAGATION)
    nested = attributes.get("lily")
    for value in (flat, nested.get("blocks_propagation") if isinstance(nested, dict) else None):
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, str))
    return found


def asset_columns(attributes: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The asset's columns as ``attributes.columns`` declares them (objects with a string ``name``)."""
    columns = (attributes or {}).get("columns")
    if not isinstance(columns, list):
        return []
    return [c for c in columns if isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"]]


def _check_name(value: str) -> str:
    if not is_name(value):
        raise ValueError(
            "a classification is 1-8 dot-separated segments of letters, digits and '_', each starting with a "
            "letter (e.g. PII.Email)"
        )
    return value


ClassificationName = Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_check_name)]
ColumnName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_COLUMN_BYTES, pattern=st.NO_NUL),
    AfterValidator(st.check_text),
]


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


class ClassifyIn(BaseModel):
    """``POST /metadata/governance/classification``."""

    model_config = ConfigDict(extra="forbid")

    asset_id: UUID
    column: ColumnName | None = Field(default=None, description="A column of the asset; absent: the asset itself")
    classifications: list[ClassificationName] = Field(min_length=1, max_length=MAX_NAMES)
    propagate: bool = Field(default=True, description="Flow downstream along lineage")
    source: Literal["manual", "external"] = Field(
        default="manual", description="external: set by another catalogue or scanner on the steward's behalf"
    )
    confidence: float = Field(default=1.0, ge=0, le=1)

    def names(self) -> list[str]:
        return _unique(self.classifications)


class TaxonomyIn(BaseModel):
    """``POST /metadata/governance/classification/taxonomy``: one name a steward adds."""

    model_config = ConfigDict(extra="forbid")

    name: ClassificationName
    description: (
        Annotated[str, StringConstraints(max_length=1024, pattern=st.NO_NUL), AfterValidator(st.check_text)] | None
    ) = None


class Place(BaseModel):
    """An asset, or one column of it."""

    model_config = ConfigDict(extra="forbid")

    asset_id: UUID
    column: str | None = None


class PropagatedFrom(BaseModel):
    model_config = ConfigDict(extra="allow")

    asset_id: UUID = Field(description="Where it was set (by hand, by a rule or from outside)")
    column: str | None
    distance: int = Field(description="Lineage steps from there")
    via: Place = Field(description="The upstream asset and column of the last step")


class ClassificationItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    classification: str
    column: str | None
    source: Source
    propagated_from: PropagatedFrom | None
    confidence: float
    applied_by: str
    applied_at: datetime
    propagate: bool


class AssetClassifications(BaseModel):
    model_config = ConfigDict(extra="allow")

    asset_id: UUID
    items: list[ClassificationItem]


class InventoryItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    asset_id: UUID
    qualified_name: str
    type: str
    column: str | None
    classification: str
    sources: list[Source] = Field(description="Every way the place carries it")


class InventoryPage(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: list[InventoryItem]
    next_cursor: str | None


class TaxonomyItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    description: str | None
    built_in: bool
    created_by: str | None = None
    created_at: datetime | None = None


class TaxonomyPage(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: list[TaxonomyItem]


# -- event payloads (the pipeline's classification.* kinds) --------------------------------------------


class SetPayload(ClassifyIn):
    """``classification.set``: a steward's (or an outside system's) names on one place."""


class RemovePayload(BaseModel):
    """``classification.remove``: a steward takes one name off one place (it sticks)."""

    model_config = ConfigDict(extra="forbid")

    asset_id: UUID
    column: ColumnName | None = None
    classification: ClassificationName


class RuleProposal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: ColumnName | None
    classification: ClassificationName
    confidence: float = Field(ge=0, le=1)
    classifier: str
    reason: str = ""


class RulesPayload(BaseModel):
    """``classification.rules``: everything the classifiers propose for the asset now (the handler adds
    what is new, unless a steward removed it, and drops rule rows no longer proposed)."""

    model_config = ConfigDict(extra="forbid")

    proposals: list[RuleProposal] = Field(max_length=10_000)


class FlowItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: ColumnName | None
    classification: ClassificationName
    origin: Place
    via: Place
    distance: int = Field(default=1, ge=1)
    confidence: float = Field(default=1.0, ge=0, le=1)


class FlowPayload(BaseModel):
    """``classification.propagate`` / ``classification.retract``: one lineage step into one asset."""

    model_config = ConfigDict(extra="forbid")

    items: list[FlowItem] = Field(min_length=1, max_length=10_000)
