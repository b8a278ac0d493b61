"""``/auth``: log in (JWT), validate a token, log out (revoke its jti)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from lily.api.deps import Principal, RequestId, RuntimeDep, authenticate
from lily.api.errors import problem_responses
from lily.auth import clients
from lily.auth.login import Attempt, log_in
from lily.domain import audit as audit_rules
from lily.domain.errors import Unauthorized
from lily.store import audit, identity

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: str = Field(min_length=1, max_length=63)
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


@router.post("/login", response_model=TokenOut, responses=problem_responses(401, 429, authenticated=False))
async def login(body: LoginIn, request: Request, runtime: RuntimeDep, request_id: RequestId) -> TokenOut:
    """A JWT for a user's password. Limited per account and per client address (429 with Retry-After)."""
    address = clients.client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        runtime.login_limits.trusted_proxies,
    )
    attempt = Attempt(body.tenant_id, body.username, body.password, address, request_id)
    token, _ = await log_in(runtime.db, runtime.hasher, runtime.login_limits, runtime.tokens, attempt)
    return TokenOut(access_token=token, expires_in=runtime.tokens.ttl_seconds)


class ValidateOut(BaseModel):
    valid: bool
    claims: dict[str, Any]


@router.get("/validate", response_model=ValidateOut, responses=problem_responses())
async def validate(principal: Annotated[Principal, Depends(authenticate)]) -> dict[str, Any]:
    return {"valid": True, "claims": principal.claims}


@router.post("/logout", status_code=204, responses=problem_responses())
async def logout(
    principal: Annotated[Principal, Depends(authenticate)], runtime: RuntimeDep, request_id: RequestId
) -> None:
    jti = principal.claims.get("jti")
    if jti is None:
        raise Unauthorized("API keys cannot log out; revoke the key instead")
    expires = datetime.fromtimestamp(principal.claims["exp"], UTC)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        await identity.revoke_token(conn, principal.tenant_id, jti, expires)
        entry = audit_rules.logged_out(jti, actor=principal.actor, request_id=request_id, at=datetime.now(UTC))
        await audit.write_audit(conn, principal.tenant_id, [entry])
