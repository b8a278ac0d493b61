"""Access policies: the document the API takes, and the rules that decide an action on an asset.

The role gives the baseline (viewer reads, editor writes, steward governs, admin all). A policy names
principals (``everyone``, ``user:U``, ``group:G``, ``role:R``, ``apikey:K``), optionally principals it
does not apply to (``except``), and selects assets by every criterion it gives (asset ids, a qualified
name prefix, types, tags, classifications; within a list, any element). ``allow`` adds its actions for
the principals on the selected assets; ``deny`` removes them and beats any allow. An admin is never
locked out; a deny it overrides is reported (and audited by the caller).

The database applies the read rule itself (migration 0008: ``lily_access_selects`` is :func:`selects`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from lily.domain.roles import Role

Action = Literal["read", "write", "govern"]
ACTIONS: tuple[Action, ...] = ("read", "write", "govern")
BASELINE: dict[str, Role] = {"read": Role.viewer, "write": Role.editor, "govern": Role.steward}

MAX_POLICIES = 500  # per tenant: every request's checks read them, so they stay few
MAX_PRINCIPALS = 100
MAX_SELECTOR_ITEMS = 100
MAX_PREFIX = 1024

_PRINCIPAL = re.compile(r"everyone|(?:user|group|apikey):[^\x00-\x1f\x7f]{1,256}|role:(?:viewer|editor|steward|admin)")


def check_principal(value: str) -> str:
    if _PRINCIPAL.fullmatch(value) is None or not value.isprintable():
        raise ValueError(
            f"{value[:80]!r} is not a principal: everyone, user:NAME, group:NAME, apikey:NAME or"
            " role:viewer|editor|steward|admin"
        )
    return value


def _unique_sorted(value: list[Any]) -> list[Any]:
    return sorted(set(value), key=str)


PrincipalName = Annotated[str, StringConstraints(max_length=263), AfterValidator(check_principal)]
Principals = Annotated[list[PrincipalName], AfterValidator(_unique_sorted)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00]*$")]
Labels = Annotated[list[Label], Field(min_length=1, max_length=MAX_SELECTOR_ITEMS), AfterValidator(_unique_sorted)]


def _lower_all(value: list[str]) -> list[str]:
    return sorted({v.lower() for v in value})


class Resources(BaseModel):
    """Which assets a policy selects: every criterion given must match (at least one is needed; to select
    every asset, give ``"qualified_name_prefix": ""``)."""

    model_config = ConfigDict(extra="forbid")

    asset_ids: Annotated[list[UUID], Field(min_length=1, max_length=MAX_SELECTOR_ITEMS)] | None = None
    qualified_name_prefix: Annotated[str, StringConstraints(max_length=MAX_PREFIX, pattern=r"^[^\x00]*$")] | None = None
    types: Annotated[Labels, AfterValidator(_lower_all)] | None = None
    tags: Labels | None = None
    classifications: Labels | None = None

    @model_validator(mode="after")
    def _some_criterion(self) -> Self:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(
                "resources needs at least one of asset_ids, qualified_name_prefix, types, tags, classifications"
            )
        if self.asset_ids is not None:
            self.asset_ids = sorted(set(self.asset_ids), key=str)
        return self


class PolicyIn(BaseModel):
    """``POST /metadata/access-control`` and the mutable part of ``PUT``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
    description: Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00]*$")] | None = None
    effect: Literal["allow", "deny"]
    actions: Annotated[list[Action], Field(min_length=1, max_length=3), AfterValidator(_unique_sorted)]
    principals: Annotated[Principals, Field(min_length=1, max_length=MAX_PRINCIPALS)]
    except_: Annotated[Principals, Field(max_length=MAX_PRINCIPALS, alias="except")] = []
    resources: Resources


class PolicyDocument(PolicyIn):
    """``PUT`` takes back what ``GET`` returned: the read-only members, when sent, must be unchanged."""

    policy_id: UUID | None = Field(default=None, description="Read-only")
    version: int | None = Field(default=None, description="Read-only: must be the current version (If-Match)")
    created_by: str | None = Field(default=None, description="Read-only")
    created_at: datetime | None = Field(default=None, description="Read-only")
    updated_by: str | None = Field(default=None, description="Read-only")
    updated_at: datetime | None = Field(default=None, description="Read-only")


POLICY_READ_ONLY = ("policy_id", "version", "created_by", "created_at", "updated_by", "updated_at")


@dataclass(frozen=True, slots=True)
class AssetFacts:
    """What selectors look at. ``asset_id`` is None for an asset a write would create."""

    asset_id: UUID | None
    qualified_name: str
    type: str
    tags: Sequence[str] = ()
    classifications: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """A stored policy, as the rules need it."""

    policy_id: UUID
    name: str
    effect: str
    actions: Sequence[str]
    principals: Sequence[str]
    except_principals: Sequence[str]
    asset_ids: Sequence[UUID] | None
    qualified_name_prefix: str | None
    types: Sequence[str] | None
    tags: Sequence[str] | None
    classifications: Sequence[str] | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Policy:
        return cls(*(row[f.name] for f in fields(cls)))


def selects(p: Policy, asset: AssetFacts) -> bool:
    """Whether ``p`` picks ``asset`` (the same rule as SQL ``lily_access_selects``)."""
    return (
        (p.asset_ids is None or (asset.asset_id is not None and asset.asset_id in p.asset_ids))
        and (p.qualified_name_prefix is None or asset.qualified_name.startswith(p.qualified_name_prefix))
        and (p.types is None or asset.type in p.types)
        and (p.tags is None or not set(p.tags).isdisjoint(asset.tags))
        and (p.classifications is None or not set(p.classifications).isdisjoint(asset.classifications))
    )


def applies(p: Policy, names: Iterable[str]) -> bool:
    """Whether ``p`` applies to a caller with these names (everyone, role:R, user:U, group:G, apikey:K)."""
    own = set(names)
    return not own.isdisjoint(p.principals) and own.isdisjoint(p.except_principals)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Literal["role", "allow", "deny", "admin"]  # admin: allowed although a deny applies
    policy_id: UUID | None = None
    policy_name: str | None = None


def decide(role: Role, names: Iterable[str], policies: Iterable[Policy], asset: AssetFacts) -> dict[str, Decision]:
    """The caller's decision for each action on ``asset``, with the policy that made it (if any)."""
    own = frozenset(names)
    relevant = [p for p in policies if applies(p, own) and selects(p, asset)]
    out: dict[str, Decision] = {}
    for action in ACTIONS:
        deny = next((p for p in relevant if p.effect == "deny" and action in p.actions), None)
        allow = next((p for p in relevant if p.effect == "allow" and action in p.actions), None)
        if role is Role.admin:
            out[action] = Decision(True, "admin", deny.policy_id, deny.name) if deny else Decision(True, "role")
        elif deny is not None:
            out[action] = Decision(False, "deny", deny.policy_id, deny.name)
        elif role.allows(BASELINE[action]):
            out[action] = Decision(True, "role")
        elif allow is not None:
            out[action] = Decision(True, "allow", allow.policy_id, allow.name)
        else:
            out[action] = Decision(False, "role")
    return out


def names_of(role: Role, subject: str, groups: Iterable[str] = (), key_name: str | None = None) -> frozenset[str]:
    """The names a principal is matched by (as ``lily.api.deps.Principal.names``)."""
    own = [subject] if subject.startswith("user:") else []
    if key_name is not None:
        own.append(f"apikey:{key_name}")
    return frozenset(["everyone", f"role:{role.value}", *own, *(f"group:{g}" for g in groups)])


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a transaction reads for: the database hides what this caller may not read (see
    ``lily.store.db.Database.tenant``). None there means internal work, which sees everything."""

    role: str
    names: tuple[str, ...]

    def names_literal(self) -> str:
        """The names as a PostgreSQL text[] literal (every element quoted and escaped)."""
        quoted = ('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in sorted(self.names))
        return "{" + ",".join(quoted) + "}"
