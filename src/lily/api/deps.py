"""Request dependencies: the runtime, the authenticated principal, and role checks.

Routes read like their intent: ``principal: Editor`` means "an authenticated caller with at least
the editor role, in the tenant its credentials belong to".
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

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
from lily.store.db import CALLER, Conn

T = TypeVar("T")


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
# The credential a request presents (None when it presents none), for dependencies that check it themselves.
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

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
    credentials: BearerCredentials,
) -> Principal:
    """Verify the bearer token, then check it against the database and take its rate limits in one round
    trip: a role change, deletion, disabling, key revocation or tenant deletion applies to the next request.

    A credential this process has checked before (``runtime.credentials``) skips the signature check and
    the lookups, but not the round trip: it carries the tenant's auth epoch of that check, and any change
    since makes the database check it in full again (``lily.auth.cache``). Rate-limit tokens come from
    those this process leased (``runtime.leases``); the round trip leases more when they run out."""
    token = _token(credentials)
    return await _authenticate(runtime, token, runtime.credentials.get(token), None)


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    return credentials.credentials


async def _authenticate(
    runtime: Runtime, token: str, known: Checked | None, wants: tuple[int, int] | None
) -> Principal:
    """The check of :func:`authenticate`. ``wants``: the tokens still to lease (``TokenLeases.take``) when
    the caller took this request's tokens already; None takes them here."""
    claims: dict[str, Any]
    if known is not None:
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
    bucket = f"{kind}:{name}"
    if wants is None:
        wants = await runtime.leases.take_waiting(tenant_id, bucket, runtime.settings.pool_timeout_seconds)
    try:
        async with runtime.db.connection() as conn:
            row = await identity.authenticate(
                conn,
                tenant_id,
                kind=kind,
                name=name,
                jti=jti,
                sid=sid,
                secret_hash=secret_hash,
                limits=runtime.rate_limits,
                known_epoch=None if known is None else known.epoch,
                principal_want=wants[0],
                tenant_want=wants[1],
            )
    except BaseException:
        # No answer (an outage, a cancelled request): whatever this request took or is leasing is released.
        runtime.leases.settle(tenant_id, bucket, wants, (0, 0), admitted=False)
        raise
    status = row["status"]
    runtime.leases.settle(
        tenant_id, bucket, wants, (row["principal_granted"], row["tenant_granted"]), status in ("ok", "cached")
    )
    if known is not None:
        if status == "cached":
            return _principal(known)
        if status != "limited":  # refused, or checked anew: the entry is stale either way
            runtime.credentials.drop(token)
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
    runtime.credentials.put(token, checked)
    return _principal(checked)


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


# One statement run as a caller (see Reading.read_one): the tenant's auth epoch, and what it read.
Statement = Callable[[Conn, Caller | None], Awaitable[tuple[int | None, T]]]


class Reading:
    """A viewer whose credential check travels with the request's one read (``read``, or ``read_one``
    for a read that is one SQL function call): for a read-only route that makes a single tenant
    transaction, one round trip in all instead of two.

    A credential this process has checked, with rate-limit tokens in hand, is taken at its cached check
    (role, groups) without a round trip of its own; ``read`` then queues the tenant's auth epoch in front
    of the route's statements (``read_one``'s statement returns it with its result). The epoch it read
    decides, as in :func:`authenticate`: still the cached check's, the results stand; moved (a revocation,
    a disabling, a role change, a deleted tenant) — the credential is checked in full (401, or the caller
    as it is now) and the statements are run again as that caller. So a change still applies to the very
    next request, and nothing read as the old caller is ever answered. Any other credential is checked
    first, exactly as :func:`authenticate` does.
    """

    def __init__(self, runtime: Runtime, token: str, principal: Principal, epoch: int | None) -> None:
        self.runtime = runtime
        self.token = token
        self.principal = principal
        self._epoch = epoch  # the cached check's epoch, still to confirm; None once confirmed

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def unconfirmed_epoch(self) -> int | None:
        """The auth epoch of the cached check this caller was taken at, while no read has confirmed it."""
        return self._epoch

    async def _check_anew(self) -> None:
        """The epoch moved: the credential checked in full (401, or the caller as it is now)."""
        # This request's rate-limit tokens are taken already: (0, 0) leases none.
        known = self.runtime.credentials.get(self.token)
        self.principal = await _authenticate(self.runtime, self.token, known, (0, 0))
        self._epoch = None

    async def read(self, queue: Callable[[Conn], Awaitable[T]]) -> tuple[Principal, T]:
        """``queue``'s statements in one :meth:`Database.read` round trip, as the caller the credential
        is now: the principal and what ``queue`` returned (fetch from its cursors afterwards)."""
        tenant_id = self.principal.tenant_id
        if self._epoch is not None:
            async with self.runtime.db.read(tenant_id) as conn:
                epoch = await identity.queue_auth_epoch(conn, tenant_id)
                queued = await queue(conn)
            row = await epoch.fetchone()
            if row is not None and row["auth_epoch"] == self._epoch:
                return self.principal, queued
            await self._check_anew()
        async with self.runtime.db.read(tenant_id) as conn:
            queued = await queue(conn)
        return self.principal, queued

    async def read_one(self, statement: Statement[T]) -> tuple[Principal, T]:
        """``statement``: one statement, on a connection outside any transaction, that reads as the caller
        it is given and returns the tenant's auth epoch (None once the tenant is gone) with its result.
        One round trip and one send, where :meth:`read`'s pipeline sends each of its statements. The epoch
        decides as in :meth:`read`: moved, the credential is checked in full and ``statement`` run again
        as the caller the credential is now."""
        tenant_id = self.principal.tenant_id
        async with self.runtime.db.alone(tenant_id) as conn:
            epoch, result = await statement(conn, CALLER.get())
        if self._epoch is None or epoch == self._epoch:
            self._epoch = None
            return self.principal, result
        await self._check_anew()
        async with self.runtime.db.alone(tenant_id) as conn:
            _, result = await statement(conn, CALLER.get())
        return self.principal, result


async def read_as_viewer(
    request: Request,
    credentials: BearerCredentials,
) -> Reading:
    # The runtime straight from the app, not as a dependency of its own: one fewer for FastAPI to solve
    # on the hottest route.
    runtime: Runtime = request.app.state.runtime
    token = _token(credentials)
    known = runtime.credentials.get(token)
    if known is None:
        return Reading(runtime, token, await _authenticate(runtime, token, None, None), None)
    wants = await runtime.leases.take_waiting(
        known.tenant_id, f"{known.kind}:{known.name}", runtime.settings.pool_timeout_seconds
    )
    if wants != (0, 0):
        return Reading(runtime, token, await _authenticate(runtime, token, known, wants), None)
    # Every role may read (viewer is the lowest), so the role needs no check here.
    return Reading(runtime, token, _principal(known), known.epoch)


ViewerReading = Annotated[Reading, Depends(read_as_viewer)]


MAX_REQUEST_ID = 200


# async: a plain ``def`` dependency runs in a worker thread (see get_runtime).
async def request_id(request: Request) -> str:
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
