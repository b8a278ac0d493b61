"""``/auth``: login, the JWT it issues, algorithm pinning, expiry, validate, logout, API keys."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest

from lily import admin
from lily.auth import tokens
from lily.auth.tokens import TokenConfig

from .helpers import assert_problem, fingerprint

PASSWORD = "correct horse battery"


@pytest.fixture
async def alice(app: Any, tenant: Any) -> dict[str, str]:
    await admin.create_user(app.state.runtime.db, tenant.tenant_id, "alice", PASSWORD, "editor")
    return {"tenant_id": tenant.tenant_id, "username": "alice", "password": PASSWORD}


async def login(client: Any, creds: dict[str, str]) -> str:
    r = await client.post("/auth/login", json=creds)
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_for(app: Any, **override: Any) -> dict[str, Any]:
    cfg: TokenConfig = app.state.runtime.tokens
    now = int(time.time())
    return {
        "sub": "user:alice",
        "tenant_id": "acme",
        "roles": ["editor"],
        "iat": now,
        "exp": now + 600,
        "iss": cfg.issuer,
        "aud": cfg.audience,
        "jti": uuid.uuid4().hex,
        **override,
    }


async def test_login_issues_a_pinned_jwt_with_every_claim(client, app, alice):
    before = time.time()
    r = await client.post("/auth/login", json=alice)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer"
    cfg: TokenConfig = app.state.runtime.tokens
    assert body["expires_in"] == cfg.ttl_seconds
    token = body["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, cfg.secret, algorithms=["HS256"], audience=cfg.audience, issuer=cfg.issuer)
    assert set(claims) == {"sub", "tenant_id", "roles", "sid", "iat", "exp", "iss", "aud", "jti"}
    assert claims["sub"] == "user:alice" and claims["tenant_id"] == "acme" and claims["roles"] == ["editor"]
    assert before - 1 <= claims["iat"] <= time.time() + 1
    assert claims["exp"] - claims["iat"] == cfg.ttl_seconds
    assert claims["iss"] == "lily" and claims["aud"] == "lily-api"
    second = jwt.decode(await login(client, alice), options={"verify_signature": False})
    assert second["jti"] != claims["jti"]


async def test_bad_logins_are_401_with_one_message(client, app, alice, make_tenant):
    await make_tenant("initech")
    await admin.create_user(app.state.runtime.db, "initech", "bob", PASSWORD, "viewer")
    attempts = [
        {**alice, "password": PASSWORD + "!"},  # wrong password
        {**alice, "username": "mallory"},  # unknown user
        {**alice, "tenant_id": "no-such-tenant"},  # unknown tenant
        {**alice, "username": "bob"},  # a user of another tenant
        {**alice, "tenant_id": "ACME\x00"},  # ids that cannot exist are unknown too, not a 422 or a 500
        {**alice, "username": "alice\x00"},
    ]
    before = await fingerprint(app.state.runtime.db, "acme")
    bodies = []
    for creds in attempts:
        r = await client.post("/auth/login", json=creds)
        body = assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert "access_token" not in body
        bodies.append(body)
    assert all(b == bodies[0] for b in bodies), bodies
    await check_login_validates_its_body(client)
    after = await fingerprint(app.state.runtime.db, "acme")
    # Nothing changed but the audit log, which has each failure in a tenant that exists (acme's three:
    # a wrong password, an unknown user, another tenant's user; initech's none).
    new_audit = after.pop("audit")[len(before["audit"]) :]
    assert [a["action"] for a in new_audit] == ["auth.login_failed"] * 3
    before.pop("audit")
    assert after == before


async def check_login_validates_its_body(client: Any) -> None:
    r = await client.post("/auth/login", json={"tenant_id": "acme", "username": "alice"})
    problem = assert_problem(r, 422, "validation")
    assert {e["field"] for e in problem["errors"]} == {"password"}
    r = await client.post("/auth/login", content=b'{"tenant_id": "acme",', headers={"content-type": "application/json"})
    assert_problem(r, 400, "malformed-json")


async def test_validate_returns_claims_and_the_token_works(client, alice, tenant):
    token = await login(client, alice)
    r = await client.get("/auth/validate", headers=bearer(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True
    assert body["claims"]["sub"] == "user:alice" and body["claims"]["tenant_id"] == "acme"
    assert body["claims"]["jti"] == jwt.decode(token, options={"verify_signature": False})["jti"]
    r = await client.get("/auth/validate", headers=tenant.headers("viewer"))
    assert r.status_code == 200
    assert r.json()["claims"]["tenant_id"] == "acme" and r.json()["claims"]["roles"] == ["viewer"]
    # The token works for its role.
    r = await client.post("/metadata", json={"qualified_name": "pg://db/s.t", "type": "table"}, headers=bearer(token))
    assert r.status_code == 201, r.text
    r = await client.get(f"/metadata/{r.json()['asset_id']}", headers=bearer(token))
    assert r.status_code == 200


async def test_logout_revokes_the_token(client, app, alice):
    token = await login(client, alice)
    other = await login(client, alice)
    r = await client.post("/auth/logout", headers=bearer(token))
    assert r.status_code == 204, r.text
    for method, path in [("GET", "/auth/validate"), ("GET", "/tenants/acme/config"), ("POST", "/auth/logout")]:
        r = await client.request(method, path, headers=bearer(token))
        assert_problem(r, 401, "unauthorized")
    r = await client.post("/metadata", json={"qualified_name": "pg://db/s.t", "type": "table"}, headers=bearer(token))
    assert_problem(r, 401)
    # Only that token: another session of the same user still works.
    assert (await client.get("/auth/validate", headers=bearer(other))).status_code == 200
    async with app.state.runtime.db.tenant("acme") as conn:
        cur = await conn.execute("SELECT action FROM audit_log WHERE action LIKE 'auth.%' ORDER BY audit_id")
        assert [r["action"] for r in await cur.fetchall()] == ["auth.login", "auth.login", "auth.logout"]


async def test_api_keys_are_bearer_tokens(client, tenant):
    for role in ("viewer", "editor", "steward", "admin"):
        r = await client.get("/auth/validate", headers=tenant.headers(role))
        assert r.status_code == 200, r.text
        assert r.json()["claims"]["roles"] == [role]
        assert r.json()["claims"]["sub"].startswith("key:")
    # An API key cannot log out (revoke the key instead); the attempt leaves it working.
    r = await client.post("/auth/logout", headers=tenant.headers("viewer"))
    assert_problem(r, 401)
    assert (await client.get("/auth/validate", headers=tenant.headers("viewer"))).status_code == 200


BAD_TOKENS = [
    "alg-none",
    "other-secret",
    "hs512",
    "hs384",
    "no-signature",
    "garbage",
    "expired",
    "wrong-aud",
    "wrong-iss",
    "missing-jti",
    "future-iat",
]


def forge(app: Any, case: str, claims: dict[str, Any]) -> str:
    cfg: TokenConfig = app.state.runtime.tokens
    if case == "alg-none":
        token = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    elif case == "other-secret":
        token = jwt.encode(claims, "another-secret-" + "y" * 32, algorithm="HS256")
    elif case == "hs512":
        token = jwt.encode(claims, cfg.secret, algorithm="HS512")
    elif case == "hs384":
        token = jwt.encode(claims, cfg.secret, algorithm="HS384")
    elif case == "no-signature":
        token = jwt.encode(claims, cfg.secret, algorithm="HS256").rsplit(".", 1)[0] + "."
    elif case == "garbage":
        token = "not-a-token"
    elif case == "expired":
        token, _ = tokens.issue(
            TokenConfig(cfg.secret, cfg.issuer, cfg.audience, -5),
            subject="user:alice",
            tenant_id="acme",
            roles=["editor"],
            sid=claims["sid"],
        )
    elif case == "wrong-aud":
        token = jwt.encode({**claims, "aud": "someone-else"}, cfg.secret, algorithm="HS256")
    elif case == "wrong-iss":
        token = jwt.encode({**claims, "iss": "evil"}, cfg.secret, algorithm="HS256")
    elif case == "missing-jti":
        token = jwt.encode({k: v for k, v in claims.items() if k != "jti"}, cfg.secret, algorithm="HS256")
    else:  # a properly signed token issued in the future is refused too
        token = jwt.encode({**claims, "iat": int(time.time()) + 3600}, cfg.secret, algorithm="HS256")
    return token


async def test_bad_tokens_are_401(client, app, alice):
    claims = claims_for(app, sid=jwt.decode(await login(client, alice), options={"verify_signature": False})["sid"])
    # Each forged token is otherwise perfect: the same claims signed properly are accepted.
    good = jwt.encode(claims, app.state.runtime.tokens.secret, algorithm="HS256")
    assert (await client.get("/auth/validate", headers=bearer(good))).status_code == 200
    before = await fingerprint(app.state.runtime.db, "acme")
    for case in BAD_TOKENS:
        token = forge(app, case, claims)
        r = await client.get("/auth/validate", headers=bearer(token))
        problem = assert_problem(r, 401, "unauthorized")
        assert "expired" in problem["detail"] if case == "expired" else "expired" not in problem["detail"]
        r = await client.post("/metadata", json={"qualified_name": "pg://x/y", "type": "table"}, headers=bearer(token))
        assert_problem(r, 401)
        assert_problem(await client.post("/auth/logout", headers=bearer(token)), 401)
    assert await fingerprint(app.state.runtime.db, "acme") == before


async def test_missing_or_malformed_credentials_are_401(client, app, tenant, other_tenant):
    for header in [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWxpY2U6cHc=",
        "Token abc",
        "Bearer lily_acme.nope.nope",
        "Bearer lily_acme..x",
        "Bearer lily_",
        "Bearer lily_no-such-tenant.abc.def",
    ]:
        headers = {} if header is None else {"Authorization": header}
        for method, path in [
            ("GET", "/auth/validate"),
            ("GET", "/tenants/acme/config"),
            ("GET", "/metadata/search"),
            ("POST", "/auth/logout"),
        ]:
            r = await client.request(method, path, headers=headers)
            assert_problem(r, 401, "unauthorized")
    # A real key with its secret changed, or moved to another tenant.
    key = tenant.keys["admin"]
    tenant_part, key_id, secret = key.removeprefix("lily_").split(".")
    wrong_secret = f"lily_{tenant_part}.{key_id}.{secret[:-2]}xx"
    moved = f"lily_{other_tenant.tenant_id}.{key_id}.{secret}"
    for forged in (wrong_secret, moved):
        assert_problem(await client.get("/auth/validate", headers=bearer(forged)), 401)
    # A properly signed token whose roles Lily does not know.
    token = jwt.encode(claims_for(app, roles=["superuser"]), app.state.runtime.tokens.secret, algorithm="HS256")
    assert_problem(await client.get("/auth/validate", headers=bearer(token)), 401)
