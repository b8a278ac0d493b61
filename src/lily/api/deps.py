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
from lily.auth.cache import Checked
from lily.domain.access import Caller
from lily.domain.errors import Forbidden, Invalid, TooManyRequests, Unauthorized
from lily.domain.roles import Role
from lily.domain.tenants import is_tenant_id
from lily.store import identity
from lily.store.db import CALLER


# async: a plain ``def`` dependency would run in a worker thread on every request, for one attribute read.
async def get_runtime(request: Request) -> Runtime:
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
    a role change, deletion, disabling, key revocation or tenant deletion applies to the next request.

    A credential this process has checked before (``runtime.credentials``) skips the signature check and
    the lookups, but not the round trip: it carries the tenant's auth epoch of that check, and any change
    since makes the database check it in full again (``lily.auth.cache``)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    token = credentials.credentials
    cache = runtime.credentials
    claims: dict[str, Any]
    known = cache.get(token)
    if known is not None:
        row = await _check(
            runtime, known.tenant_id, known.kind, known.name, known.jti, known.sid, known.secret_hash, known.epoch
        )
        if row["status"] == "cached":
            return _principal(known)
        if row["status"] != "limited":  # refused, or checked anew: the entry is stale either way
            cache.drop(token)
        tenant_id, kind, name, claims = known.tenant_id, known.kind, known.name, known.claims
        jti, sid, secret_hash = known.jti, known.sid, known.secret_hash
    else:
        api_key = tokens.parse_api_key(token)
        if api_key is not None:
            tenant_id, name, secret = api_key
            kind, jti, sid, secret_hash = "key", None, None, tokens.hash_secret(secret)
            claims = {}
        else:
            claims = tokens.verify(runtime.tokens, token)
            tenant_id, subject = claims["tenant_id"], claims["sub"]
            if not isinstance(subject, str) or not subject.startswith("user:"):
                raise Unauthorized("invalid token")
            kind, name, secret_hash = "user", subject.removeprefix("user:"), None
            jti, sid = claims["jti"], claims["sid"]
        if not (isinstance(tenant_id, str) and is_tenant_id(tenant_id) and _storable(name)):
            raise Unauthorized(_REFUSED["unknown"])
        if kind == "user" and not (_storable(jti) and _storable(sid)):
            raise Unauthorized("invalid token")
        row = await _check(runtime, tenant_id, kind, name, jti, sid, secret_hash, None)
    status = row["status"]
    if status == "limited":
        raise TooManyRequests(
            "rate limit exceeded; slow down", retry_after_seconds=max(1, math.ceil(row["retry_after"]))
        )
    if status != "ok":
        raise Unauthorized(_REFUSED.get(status, _REFUSED["unknown"]))
    checked = Checked(
        tenant_id=tenant_id,
        kind=kind,
        name=name,
        jti=jti,
        sid=sid,
        secret_hash=secret_hash,
        claims=claims,
        expires_at=float(claims["exp"]) if kind == "user" else None,
        epoch=row["epoch"],
        role=row["role"],
        groups=tuple(row["groups"] or ()),
        key_name=row["key_name"],
    )
    cache.put(token, checked)
    return _principal(checked)


async def _check(
    runtime: Runtime,
    tenant_id: str,
    kind: str,
    name: str,
    jti: str | None,
    sid: str | None,
    secret_hash: str | None,
    known_epoch: int | None,
) -> dict[str, Any]:
    async with runtime.db.connection() as conn:
        return await identity.authenticate(
            conn,
            tenant_id,
            kind=kind,
            name=name,
            jti=jti,
            sid=sid,
            secret_hash=secret_hash,
            limits=runtime.rate_limits,
            known_epoch=known_epoch,
        )


def _principal(checked: Checked) -> Principal:
    role = Role(checked.role)
    if checked.kind == "key":
        subject = f"key:{checked.name}"
        claims = {"sub": subject, "tenant_id": checked.tenant_id, "roles": [role.value], "key_name": checked.key_name}
    else:
        subject = f"user:{checked.name}"
        # The token's claims, but the role and groups of now.
        claims = {**checked.claims, "roles": [role.value], "groups": list(checked.groups)}
    principal = Principal(checked.tenant_id, subject, role, claims, checked.groups, checked.key_name)
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
