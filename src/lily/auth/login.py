"""Logging in: limits per account and per client address, argon2 off the event loop, every failure audited.

Each attempt is counted before the password is checked (``lily_login_attempt`` in migration 0005), so a
burst of parallel guesses cannot slip past the limit. Past the free attempts, each attempt locks the
account (or address) for a backoff that doubles, up to ``LILY_LOGIN_BACKOFF_MAX_SECONDS``: guessing stays
slow, yet whoever guesses at someone else's account can keep it locked for at most that long after
their last guess, and attempts while locked are refused without being counted or hashed. A correct
password resets the account and gives the address its attempt back.

Unknown tenants and users cost the same as known ones (a dummy hash is verified) and get the same answer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lily.auth import clients, tokens
from lily.auth.limits import LoginLimits
from lily.auth.passwords import Hasher
from lily.domain.errors import TooManyRequests, Unauthorized
from lily.domain.tenants import is_tenant_id
from lily.store import audit, identity
from lily.store.db import Database

log = logging.getLogger(__name__)

REFUSED = "unknown tenant, user or password"


@dataclass(frozen=True, slots=True)
class Attempt:
    tenant_id: str
    username: str
    password: str
    address: str
    request_id: str | None = None


async def log_in(
    db: Database, hasher: Hasher, limits: LoginLimits, config: tokens.TokenConfig, attempt: Attempt
) -> tuple[str, dict[str, Any]]:
    """A token and its claims for a correct password; raises Unauthorized or TooManyRequests."""
    account = clients.account_key(attempt.tenant_id, attempt.username)
    address = clients.address_key(attempt.address)
    async with db.connection() as conn:
        wait = await identity.login_attempt(conn, account, address, limits)
    if wait > 0:
        raise TooManyRequests("too many login attempts; try again later", retry_after_seconds=max(1, math.ceil(wait)))
    row = None
    # An id that cannot exist (or a name PostgreSQL cannot hold) is simply unknown: same answer, same work.
    if is_tenant_id(attempt.tenant_id) and attempt.username.isprintable():
        async with db.tenant(attempt.tenant_id) as conn:
            row = await identity.get_login(conn, attempt.tenant_id, attempt.username)
    ok = await hasher.verify(row["password_hash"] if row else None, attempt.password)
    if row is None:
        log.info("login refused: unknown tenant, or a name no tenant can hold")
        raise Unauthorized(REFUSED)
    if not ok or row["password_hash"] is None or row["disabled"]:
        reason = "unknown_user" if row["password_hash"] is None else ("disabled" if ok else "wrong_password")
        # Nobody authenticated, so the actor is anonymous; the name tried is in the detail.
        await _audit(db, attempt, "auth.login_failed", "anonymous", username=attempt.username, reason=reason)
        raise Unauthorized(REFUSED)
    token, claims = tokens.issue(
        config,
        subject=f"user:{attempt.username}",
        tenant_id=attempt.tenant_id,
        roles=[row["role"]],
        sid=str(row["sessions_id"]),
    )
    async with db.tenant(attempt.tenant_id) as conn:
        await identity.login_succeeded(conn, account, address, limits)
        await _audit_in(conn, attempt, "auth.login", claims["sub"], jti=claims["jti"])
    return token, claims


async def _audit(db: Database, attempt: Attempt, action: str, actor: str, **detail: Any) -> None:
    async with db.tenant(attempt.tenant_id) as conn:
        await _audit_in(conn, attempt, action, actor, **detail)


async def _audit_in(conn: Any, attempt: Attempt, action: str, actor: str, **detail: Any) -> None:
    entry = {
        "action": action,
        "actor": actor,
        "request_id": attempt.request_id,
        "at": datetime.now(UTC),
        "detail": {"address": attempt.address, **detail},
    }
    await audit.write_audit(conn, attempt.tenant_id, [entry])
