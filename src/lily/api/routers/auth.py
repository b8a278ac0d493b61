"""``/auth``: log in (JWT), validate a token, log out (revoke its jti)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from lily.api.deps import Principal, RuntimeDep, authenticate
from lily.auth import passwords, tokens
from lily.domain.errors import Unauthorized
from lily.domain.tenants import is_tenant_id
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


@router.post("/login", response_model=TokenOut)
async def login(body: LoginIn, runtime: RuntimeDep) -> TokenOut:
    user = None
    # An id that cannot exist (or a name PostgreSQL cannot hold) is simply unknown: same answer, same work.
    if is_tenant_id(body.tenant_id) and "\x00" not in body.username:
        async with runtime.db.tenant(body.tenant_id) as conn:
            user = await identity.get_user(conn, body.tenant_id, body.username)
    ok = passwords.verify_password(user["password_hash"] if user else None, body.password)
    if not ok or user is None or user["disabled"]:
        raise Unauthorized("unknown tenant, user or password")
    token, claims = tokens.issue(
        runtime.tokens, subject=f"user:{body.username}", tenant_id=body.tenant_id, roles=[user["role"]]
    )
    async with runtime.db.tenant(body.tenant_id) as conn:
        await audit.write_audit(
            conn,
            body.tenant_id,
            [
                {
                    "action": "auth.login",
                    "actor": claims["sub"],
                    "at": datetime.now(UTC),
                    "detail": {"jti": claims["jti"]},
                }
            ],
        )
    return TokenOut(access_token=token, expires_in=runtime.tokens.ttl_seconds)


@router.get("/validate")
async def validate(principal: Annotated[Principal, Depends(authenticate)]) -> dict[str, Any]:
    return {"valid": True, "claims": principal.claims}


@router.post("/logout", status_code=204)
async def logout(principal: Annotated[Principal, Depends(authenticate)], runtime: RuntimeDep) -> None:
    jti = principal.claims.get("jti")
    if jti is None:
        raise Unauthorized("API keys cannot log out; revoke the key instead")
    expires = datetime.fromtimestamp(principal.claims["exp"], UTC)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        await identity.revoke_token(conn, principal.tenant_id, jti, expires)
        await audit.write_audit(
            conn,
            principal.tenant_id,
            [
                {
                    "action": "auth.logout",
                    "actor": principal.actor,
                    "at": datetime.now(UTC),
                    "detail": {"jti": jti},
                }
            ],
        )
