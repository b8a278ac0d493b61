"""Request dependencies: the runtime, the authenticated principal, and role checks.

Routes read like their intent: ``principal: Editor`` means "an authenticated caller with at least
the editor role, in the tenant its credentials belong to".
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lily.api.pagination import short_name
from lily.api.runtime import Runtime
from lily.auth import tokens
from lily.domain.access import Caller
from lily.domain.errors import Forbidden, Invalid, TooManyRequests, Unauthorized
from lily.domain.roles import Role
from lily.domain.tenants import is_tenant_id
from lily.store import identity
from lily.store.db import CALLER


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as its rows say now (role and groups are looked up on every request, never trusted
    from the token)."""

    tenant_id: str
    subject: str  # "user:<name>" or "key:<id>"
    role: Role
    claims: dict[str, Any]
    groups: tuple[str, ...] = ()
    key_name: str | None = None

    @property
    def actor(self) -> str:
        return self.subject

    @property
    def names(self) -> frozenset[str]:
        """The names access policies match: everyone, role:R, and user:U with group:G, or apikey:NAME."""
        own = [f"user:{self.subject.removeprefix('user:')}"] if self.subject.startswith("user:") else []
        if self.key_name is not None:
            own.append(f"apikey:{self.key_name}")
        return frozenset(["everyone", f"role:{self.role.value}", *own, *(f"group:{g}" for g in self.groups)])


_bearer = HTTPBearer(auto_error=False, description="A JWT from /auth/login, or a Lily API key")

# What a refused credential is told. Deliberately vague where more would help a guesser.
_REFUSED = {
    "unknown": "invalid credentials",
    "revoked": "token revoked",
    "disabled": "user disabled",
}


def _storable(value: object) -> bool:
    return short_name(value, 256)


async def authenticate(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Verify the bearer token, then check it against the database and the rate limits in one round trip:
    a role change, deletion, disabling, key revocation or tenant deletion applies to the next request."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    token = credentials.credentials
    api_key = tokens.parse_api_key(token)
    claims: dict[str, Any]
    if api_key is not None:
        tenant_id, name, secret = api_key
        kind, jti, sid, secret_hash = "key", None, None, tokens.hash_secret(secret)
        subject = f"key:{name}"
    else:
        claims = tokens.verify(runtime.tokens, token)
        tenant_id, subject = claims["tenant_id"], claims["sub"]
        if not isinstance(subject, str) or not subject.startswith("user:"):
            raise Unauthorized("invalid token")
        kind, name, jti, sid, secret_hash = "user", subject.removeprefix("user:"), claims["jti"], claims["sid"], None
    if not (isinstance(tenant_id, str) and is_tenant_id(tenant_id) and _storable(name)):
        raise Unauthorized(_REFUSED["unknown"])
    if kind == "user" and not (_storable(jti) and _storable(sid)):
        raise Unauthorized("invalid token")
    async with runtime.db.connection() as conn:
        row = await identity.authenticate(
            conn, tenant_id, kind=kind, name=name, jti=jti, sid=sid, secret_hash=secret_hash, limits=runtime.rate_limits
        )
    status = row["status"]
    if status == "limited":
        raise TooManyRequests(
            "rate limit exceeded; slow down", retry_after_seconds=max(1, math.ceil(row["retry_after"]))
        )
    if status != "ok":
        raise Unauthorized(_REFUSED.get(status, _REFUSED["unknown"]))
    role = Role(row["role"])
    groups = tuple(row["groups"] or ())
    if kind == "key":
        claims = {"sub": subject, "tenant_id": tenant_id, "roles": [role.value], "key_name": row["key_name"]}
    else:
        # The token's claims, but the role and groups of now.
        claims = {**claims, "roles": [role.value], "groups": list(groups)}
    principal = Principal(tenant_id, subject, role, claims, groups, row["key_name"])
    # Access policies (migration 0008) depend on this: from here on, every tenant transaction of this
    # request hides the assets the caller may not read.
    CALLER.set(Caller(role.value, tuple(sorted(principal.names))))
    return principal


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
