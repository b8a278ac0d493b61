"""``/metadata/access-control``: access policies (stewards and admins) and who may do what on an asset.

Listed before ``metadata.item_router`` so ``/metadata/access-control`` never matches ``/metadata/{asset_id}``.
Enforcement is not here: the database hides what a caller may not read, and write routes check with
:mod:`lily.api.access`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from lily.api import access as checks
from lily.api import pagination
from lily.api.deps import Principal, RequestId, RuntimeDep, Steward, Viewer
from lily.api.errors import problem_responses
from lily.domain import access as domain
from lily.domain.errors import Forbidden, Invalid, NotFound, PayloadTooLarge, PreconditionFailed
from lily.domain.roles import Role
from lily.domain.round_trip import changed_read_only
from lily.domain.rules import require_asset
from lily.store import access as store
from lily.store import assets as store_assets
from lily.store import audit as store_audit
from lily.store.db import Conn

router = APIRouter(prefix="/metadata/access-control", tags=["access-control"])


class PolicyOut(BaseModel):
    policy_id: UUID
    name: str
    description: str | None
    effect: Literal["allow", "deny"]
    actions: list[domain.Action]
    principals: list[str]
    except_: list[str] = Field(alias="except")
    resources: domain.Resources
    version: int
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


class PolicyPage(BaseModel):
    items: list[PolicyOut]
    next_cursor: str | None


class ActionDecision(BaseModel):
    allowed: bool
    reason: Literal["role", "allow", "deny", "admin"]
    policy_id: UUID | None
    policy_name: str | None


class AppliedPolicy(BaseModel):
    policy_id: UUID
    name: str
    effect: Literal["allow", "deny"]
    actions: list[domain.Action]
    applies_to_principal: bool


class AssetAccess(BaseModel):
    asset_id: UUID
    principal: str
    role: Role
    actions: dict[domain.Action, ActionDecision]
    policies: list[AppliedPolicy]


def _out(row: dict[str, Any]) -> dict[str, Any]:
    resources = {
        "asset_ids": [str(a) for a in row["asset_ids"]] if row["asset_ids"] is not None else None,
        "qualified_name_prefix": row["qualified_name_prefix"],
        "types": row["types"],
        "tags": row["tags"],
        "classifications": row["classifications"],
    }
    return {
        "policy_id": str(row["policy_id"]),
        "name": row["name"],
        "description": row["description"],
        "effect": row["effect"],
        "actions": row["actions"],
        "principals": row["principals"],
        "except": row["except_principals"],
        "resources": {k: v for k, v in resources.items() if v is not None},
        "version": row["version"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_by": row["updated_by"],
        "updated_at": row["updated_at"],
    }


def _missing(policy_id: UUID) -> NotFound:
    return NotFound(f"access policy {policy_id} does not exist")


async def _audit(conn: Conn, principal: Principal, action: str, request_id: str, **detail: Any) -> None:
    entry = {"action": action, "actor": principal.actor, "request_id": request_id, "at": datetime.now(UTC),
             "detail": detail}  # fmt: skip
    await store_audit.write_audit(conn, principal.tenant_id, [entry])


def _json(row: dict[str, Any]) -> dict[str, Any]:
    """The policy as the audit log keeps it."""
    return PolicyOut.model_validate(_out(row)).model_dump(mode="json", by_alias=True)


@router.post("", status_code=201, response_model=PolicyOut, responses=problem_responses(409, 413))
async def create_policy(
    body: domain.PolicyIn, principal: Steward, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Create a policy (at most ``MAX_POLICIES`` per tenant: 413 beyond). 409 when its name is taken."""
    async with runtime.db.tenant(principal.tenant_id) as conn:
        await store.lock_tenant(conn, principal.tenant_id)
        if await store.count(conn, principal.tenant_id) >= domain.MAX_POLICIES:
            raise PayloadTooLarge(
                f"a tenant has at most {domain.MAX_POLICIES} access policies", limit=domain.MAX_POLICIES
            )
        row = await store.create(conn, principal.tenant_id, body, principal.actor)
        await _audit(conn, principal, "access_policy.created", request_id, policy=_json(row))
    return _out(row)


@router.get("/policies", response_model=PolicyPage, responses=problem_responses())
async def list_policies(
    principal: Steward,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: pagination.Cursor = None,
) -> dict[str, Any]:
    """The tenant's policies, by id, paginated."""
    after = pagination.decode(cursor, valid=_uuid_position)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        rows = await store.page(conn, principal.tenant_id, after=UUID(after) if after else None, limit=limit + 1)
    return pagination.page([_out(r) for r in rows], limit, lambda p: p["policy_id"])


def _uuid_position(position: Any) -> bool:
    try:
        UUID(position)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


@router.get("/policies/{policy_id}", response_model=PolicyOut, responses=problem_responses(404))
async def get_policy(policy_id: UUID, principal: Steward, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.db.tenant(principal.tenant_id) as conn:
        row = await store.get(conn, principal.tenant_id, policy_id)
    if row is None:
        raise _missing(policy_id)
    return _out(row)


@router.put("/policies/{policy_id}", response_model=PolicyOut, responses=problem_responses(404, 409, 412))
async def replace_policy(
    policy_id: UUID, body: domain.PolicyDocument, principal: Steward, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Replace the policy. The body may be the document ``GET`` returned: its read-only members must then
    be unchanged (422 naming them), and ``version`` must be the current one (else 412)."""
    async with runtime.db.tenant(principal.tenant_id) as conn:
        before = await store.get(conn, principal.tenant_id, policy_id, for_update=True)
        if before is None:
            raise _missing(policy_id)
        stored = PolicyOut.model_validate(_out(before)).model_dump()
        if body.version is not None and body.version != before["version"]:
            raise PreconditionFailed(
                f"policy {policy_id} is at version {before['version']}, not {body.version}",
                current_version=before["version"],
            )
        errors = changed_read_only(body, stored, tuple(n for n in domain.POLICY_READ_ONLY if n != "version"))
        if errors:
            raise Invalid("; ".join(e["message"] for e in errors), errors=errors)
        row = await store.replace(conn, principal.tenant_id, policy_id, body, principal.actor)
        assert row is not None
        await _audit(conn, principal, "access_policy.replaced", request_id, before=_json(before), after=_json(row))
    return _out(row)


@router.delete("/policies/{policy_id}", status_code=204, response_class=Response, responses=problem_responses(404))
async def delete_policy(policy_id: UUID, principal: Steward, runtime: RuntimeDep, request_id: RequestId) -> Response:
    async with runtime.db.tenant(principal.tenant_id) as conn:
        row = await store.delete(conn, principal.tenant_id, policy_id)
        if row is None:
            raise _missing(policy_id)
        await _audit(conn, principal, "access_policy.deleted", request_id, policy=_json(row))
    return Response(status_code=204)


PrincipalQuery = Annotated[
    str | None,
    Query(
        alias="principal",
        max_length=263,
        description="Stewards: whose access to show (user:NAME, apikey:NAME or role:R); default the caller",
    ),
]


@router.get("/{asset_id}", response_model=AssetAccess, responses=problem_responses(404))
async def asset_access(
    asset_id: UUID, principal: Viewer, runtime: RuntimeDep, principal_: PrincipalQuery = None
) -> dict[str, Any]:
    """The policies that select the asset and the effective actions of the caller (or, for stewards, of
    ``?principal=``), each with what decided it. An asset the caller may not read is 404."""
    if principal_ is not None and not principal.role.allows(Role.steward):
        raise Forbidden("only stewards and admins may ask about another principal", field="principal")
    async with runtime.db.tenant(principal.tenant_id) as conn:
        asset = require_asset(await store_assets.get(conn, principal.tenant_id, asset_id), asset_id)
        await checks.audit_admin_read(conn, principal, asset)
        who, role, names = await _subject(conn, principal, principal_)
        policies = [domain.Policy.from_row(r) for r in await store.all_policies(conn, principal.tenant_id)]
    facts = checks.facts(asset)
    decided = domain.decide(role, names, policies, facts)
    return {
        "asset_id": asset_id,
        "principal": who,
        "role": role,
        "actions": {
            a: {"allowed": d.allowed, "reason": d.reason, "policy_id": d.policy_id, "policy_name": d.policy_name}
            for a, d in decided.items()
        },
        "policies": [
            {
                "policy_id": p.policy_id,
                "name": p.name,
                "effect": p.effect,
                "actions": list(p.actions),
                "applies_to_principal": domain.applies(p, names),
            }
            for p in policies
            if domain.selects(p, facts)
        ],
    }


async def _subject(conn: Conn, caller: Principal, asked: str | None) -> tuple[str, Role, frozenset[str]]:
    """(label, role, names) of whom to decide for."""
    if asked is None:
        return caller.subject, caller.role, caller.names
    kind, _, name = asked.partition(":")
    if kind == "role" and name in Role.__members__:
        role = Role(name)
        return asked, role, domain.names_of(role, "")
    if kind == "user" and pagination.short_name(name, 256):
        row = await store.user_access(conn, caller.tenant_id, name)
        if row is not None:
            role = Role(row["role"])
            return asked, role, domain.names_of(role, asked, row["groups"])
    elif kind == "apikey" and pagination.short_name(name, 256):
        row = await store.key_access(conn, caller.tenant_id, name)
        if row is not None:
            role = Role(row["role"])
            return asked, role, domain.names_of(role, f"key:{name}", key_name=name)
    raise Invalid(
        f"principal {asked[:80]!r} is not a user, API key or role of this tenant (user:NAME, apikey:NAME, role:R)",
        field="principal",
    )
