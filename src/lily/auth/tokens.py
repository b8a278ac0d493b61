"""JWT access tokens (HS256, pinned: a token naming any other algorithm is refused) and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from lily.domain.errors import Unauthorized

ALGORITHM = "HS256"
API_KEY_PREFIX = "lily_"


@dataclass(frozen=True, slots=True)
class TokenConfig:
    secret: str
    issuer: str
    audience: str
    ttl_seconds: int


# sid: the user's sessions id when the token was issued; a token whose sid is no longer the user's is
# refused (see migration 0005), which is how a password change or disabling ends every session at once.
REQUIRED_CLAIMS = ["sub", "tenant_id", "roles", "sid", "iat", "exp", "iss", "aud", "jti"]


def issue(
    config: TokenConfig, *, subject: str, tenant_id: str, roles: list[str], sid: str
) -> tuple[str, dict[str, Any]]:
    now = int(time.time())
    claims = {
        "sub": subject,
        "tenant_id": tenant_id,
        "roles": roles,
        "sid": sid,
        "iat": now,
        "exp": now + config.ttl_seconds,
        "iss": config.issuer,
        "aud": config.audience,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, config.secret, algorithm=ALGORITHM), claims


def verify(config: TokenConfig, token: str) -> dict[str, Any]:
    try:
        return jwt.decode(
            token,
            config.secret,
            algorithms=[ALGORITHM],
            audience=config.audience,
            issuer=config.issuer,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid token") from exc


# -- API keys: lily_<tenant>.<key id>.<secret>. The tenant is in the key so it can be looked up under
# row-level security; only a SHA-256 of the secret is stored (it is random, so no slow hash is needed).


def new_api_key(tenant_id: str) -> tuple[str, str, str]:
    """(key id, full key to show once, hash to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{API_KEY_PREFIX}{tenant_id}.{key_id}.{secret}", hash_secret(secret)


def parse_api_key(token: str) -> tuple[str, str, str] | None:
    """(tenant, key id, secret) if ``token`` looks like an API key."""
    if not token.startswith(API_KEY_PREFIX):
        return None
    parts = token[len(API_KEY_PREFIX) :].split(".")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
