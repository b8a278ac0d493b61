"""JWTs and API keys, without a database."""

from __future__ import annotations

import time

import jwt
import pytest

from lily.auth import passwords, tokens
from lily.domain.errors import Unauthorized

CONFIG = tokens.TokenConfig("s" * 40, "lily", "lily-api", 600)


def test_issue_and_verify_round_trip() -> None:
    token, claims = tokens.issue(CONFIG, subject="user:alice", tenant_id="acme", roles=["viewer"], sid="s1")
    assert tokens.verify(CONFIG, token) == claims
    assert claims["exp"] - claims["iat"] == 600
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


@pytest.mark.parametrize(
    "change",
    [
        {"secret": "t" * 40},
        {"issuer": "someone"},
        {"audience": "another-api"},
    ],
)
def test_verify_refuses_tokens_of_another_configuration(change: dict[str, str]) -> None:
    other = tokens.TokenConfig(
        change.get("secret", CONFIG.secret),
        change.get("issuer", CONFIG.issuer),
        change.get("audience", CONFIG.audience),
        600,
    )
    token, _ = tokens.issue(other, subject="user:a", tenant_id="acme", roles=["admin"], sid="s1")
    with pytest.raises(Unauthorized, match="invalid token"):
        tokens.verify(CONFIG, token)


def test_verify_pins_the_algorithm() -> None:
    _, claims = tokens.issue(CONFIG, subject="user:a", tenant_id="acme", roles=["admin"], sid="s1")
    for alg in ("HS384", "HS512"):
        with pytest.raises(Unauthorized):
            tokens.verify(CONFIG, jwt.encode(claims, CONFIG.secret, algorithm=alg))
    with pytest.raises(Unauthorized):
        tokens.verify(CONFIG, jwt.encode(claims, None, algorithm="none"))  # type: ignore[arg-type]


def test_expired_and_incomplete_tokens() -> None:
    token, _ = tokens.issue(
        tokens.TokenConfig(CONFIG.secret, "lily", "lily-api", -1),
        subject="user:a",
        tenant_id="acme",
        roles=["admin"],
        sid="s1",
    )
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(CONFIG, token)
    now = int(time.time())
    full = {
        "sub": "user:a",
        "tenant_id": "acme",
        "roles": ["admin"],
        "sid": "s1",
        "iat": now,
        "exp": now + 60,
        "iss": "lily",
        "aud": "lily-api",
        "jti": "j",
    }
    for missing in full:
        partial = {k: v for k, v in full.items() if k != missing}
        with pytest.raises(Unauthorized):
            tokens.verify(CONFIG, jwt.encode(partial, CONFIG.secret, algorithm="HS256"))


def test_api_keys() -> None:
    key_id, key, key_hash = tokens.new_api_key("acme")
    tenant, parsed_id, secret = tokens.parse_api_key(key) or ("", "", "")
    assert (tenant, parsed_id) == ("acme", key_id)
    assert tokens.secret_matches(secret, key_hash)
    assert not tokens.secret_matches(secret + "x", key_hash)
    assert secret not in key_hash
    for bad in ("", "lily_", "lily_acme", "lily_acme.id", "lily_acme..s", "lily_.id.s", "lily_a.b.c.d", "bearer"):
        assert tokens.parse_api_key(bad) is None, bad
    assert tokens.new_api_key("acme")[1] != key


def test_passwords_use_argon2id() -> None:
    hashed = passwords.hash_password("a-long-password")
    assert hashed.startswith("$argon2id$")
    assert passwords.verify_password(hashed, "a-long-password")
    assert not passwords.verify_password(hashed, "a-long-passworD")
    assert not passwords.verify_password(None, "lily-no-such-user")  # the dummy hash never lets anyone in
    assert not passwords.verify_password("not-a-hash", "x")
