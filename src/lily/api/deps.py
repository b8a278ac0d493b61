"""Request dependencies: the runtime, the authenticated principal, and role checks.

Routes read like their intent: ``principal: Editor`` means "an authenticated caller with at least
the editor role, in the tenant its credentials belong to".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lily.api.runtime import Runtime
from lily.auth import tokens
from lily.domain.errors import Forbidden, Invalid, Unauthorized
from lily.domain.roles import Role, highest
from lily.store import identity


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    subject: str  # "user:<name>" or "key:<id>"
    role: Role
    claims: dict[str, Any]

    @property
    def actor(self) -> str:
        return self.subject


_bearer = HTTPBearer(auto_error=False, description="A JWT from /auth/login, or a Lily API key")


async def authenticate(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    token = credentials.credentials
    api_key = tokens.parse_api_key(token)
    if api_key is not None:
        return await _from_api_key(runtime, *api_key)
    claims = tokens.verify(runtime.tokens, token)
    role = highest(list(claims.get("roles") or []))
    if role is None:
        raise Unauthorized("token carries no known role")
    async with runtime.db.connection() as conn:
        if await identity.token_revoked(conn, claims["tenant_id"], claims["jti"]):
            raise Unauthorized("token revoked")
    return Principal(claims["tenant_id"], claims["sub"], role, claims)


async def _from_api_key(runtime: Runtime, tenant_id: str, key_id: str, secret: str) -> Principal:
    async with runtime.db.connection() as conn:
        row = await identity.authenticate_api_key(conn, tenant_id, key_id)
    if row is None or not tokens.secret_matches(secret, row["key_hash"]):
        raise Unauthorized("invalid API key")
    role = Role(row["role"])
    claims = {"sub": f"key:{key_id}", "tenant_id": tenant_id, "roles": [role.value], "key_name": row["name"]}
    return Principal(tenant_id, f"key:{key_id}", role, claims)


def require(role: Role) -> Any:
    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.role.allows(role):
            raise Forbidden(f"this needs the {role.value} role or higher; you have {principal.role.value}")
        return principal

    return Depends(check)


Viewer = Annotated[Principal, require(Role.viewer)]
Editor = Annotated[Principal, require(Role.editor)]
Steward = Annotated[Principal, require(Role.steward)]
Admin = Annotated[Principal, require(Role.admin)]


MAX_REQUEST_ID = 200


def request_id(request: Request) -> str:
    """The client's ``X-Request-ID`` (kept in history and audit), else a new one."""
    given = request.headers.get("x-request-id")
    if not given:
        return uuid.uuid4().hex
    if len(given) > MAX_REQUEST_ID or not given.isprintable():
        raise Invalid(f"X-Request-ID must be at most {MAX_REQUEST_ID} printable characters", field="X-Request-ID")
    return given


RequestId = Annotated[str, Depends(request_id)]


def utcnow() -> datetime:
    return datetime.now(UTC)
