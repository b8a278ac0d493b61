"""Users and API keys through the admin API; tokens follow their principal on the very next request."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from lily import admin

from .helpers import assert_problem, fields_of, fingerprint

PASSWORD = "correct horse battery"
JSON = "application/json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_user(client: httpx.AsyncClient, tenant: Any, username: str, role: str, **fields: Any) -> dict[str, Any]:
    r = await client.post(
        f"/tenants/{tenant.tenant_id}/users",
        json={"username": username, "password": PASSWORD, "role": role, **fields},
        headers=tenant.headers("admin"),
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def login(client: httpx.AsyncClient, tenant_id: str, username: str, password: str = PASSWORD) -> str:
    r = await client.post("/auth/login", json={"tenant_id": tenant_id, "username": username, "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


async def patch(client: httpx.AsyncClient, tenant: Any, username: str, **fields: Any) -> httpx.Response:
    return await client.patch(
        f"/tenants/{tenant.tenant_id}/users/{username}", json=fields, headers=tenant.headers("admin")
    )


async def audit_actions(app: Any, tenant_id: str, prefix: str) -> list[dict[str, Any]]:
    async with app.state.runtime.db.tenant(tenant_id) as conn:
        cur = await conn.execute(
            "SELECT action, actor, request_id, detail FROM audit_log WHERE action LIKE %s ORDER BY audit_id",
            [prefix + "%"],
        )
        return await cur.fetchall()


async def test_users_crud_never_shows_a_password(client, app, tenant):
    created = await new_user(client, tenant, "alice", "editor", groups=["finance", "data-eng", "finance"])
    assert created["username"] == "alice" and created["role"] == "editor" and created["disabled"] is False
    assert created["groups"] == ["data-eng", "finance"]  # sorted, unique
    await new_user(client, tenant, "bob", "viewer")
    base = f"/tenants/{tenant.tenant_id}/users"
    r = await client.get(base, headers=tenant.headers("admin"))
    assert r.status_code == 200, r.text
    assert [u["username"] for u in r.json()["items"]] == ["alice", "bob"]
    r = await client.get(f"{base}/alice", headers=tenant.headers("admin"))
    assert r.status_code == 200 and r.json()["groups"] == ["data-eng", "finance"]
    r = await patch(client, tenant, "alice", role="steward", groups=[], password="another long password")
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "steward" and r.json()["groups"] == []
    # The new password works, the old one no longer does.
    await login(client, tenant.tenant_id, "alice", "another long password")
    r = await client.post(
        "/auth/login", json={"tenant_id": tenant.tenant_id, "username": "alice", "password": PASSWORD}
    )
    assert_problem(r, 401)
    r = await client.delete(f"{base}/bob", headers=tenant.headers("admin"))
    assert r.status_code == 204, r.text
    assert_problem(await client.get(f"{base}/bob", headers=tenant.headers("admin")), 404, "not-found")
    assert_problem(await client.delete(f"{base}/bob", headers=tenant.headers("admin")), 404)
    # No response ever carried a password or a hash.
    r = await client.get(base, headers=tenant.headers("admin"))
    assert "password" not in r.text and "argon2" not in r.text and "correct horse" not in r.text


async def test_users_list_paginates(client, tenant):
    for name in ("u1", "u2", "u3"):
        await new_user(client, tenant, name, "viewer")
    base = f"/tenants/{tenant.tenant_id}/users"
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(base, params=params, headers=tenant.headers("admin"))).json()
        seen += [u["username"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["u1", "u2", "u3"]
    for bad in ("not-a-cursor", "WzFd"):  # garbage, and a well-formed position of the wrong shape ([1])
        problem = assert_problem(await client.get(base, params={"cursor": bad}, headers=tenant.headers("admin")), 422)
        assert fields_of(problem) == {"cursor"}


async def test_bad_user_bodies_are_422_naming_the_field(client, app, tenant):
    base = f"/tenants/{tenant.tenant_id}/users"
    good = {"username": "carol", "password": PASSWORD, "role": "viewer"}
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    for change, field in [
        ({"username": "a/b"}, "username"),
        ({"username": "nul\x00"}, "username"),
        ({"username": ""}, "username"),
        ({"username": "x" * 257}, "username"),
        ({"password": "short"}, "password"),
        ({"password": "lone \ud800 surrogate"}, "password"),
        ({"role": "root"}, "role"),
        ({"groups": ["has space"]}, "groups"),
        ({"groups": ["g"] * 65}, "groups"),
        ({"disabled": "perhaps"}, "disabled"),
        ({"extra": 1}, "extra"),
    ]:
        # json.dumps escapes a lone surrogate as \ud800, as a hostile client would send it.
        content = json.dumps({**good, **change})
        r = await client.post(base, content=content, headers=tenant.headers("admin", **{"content-type": JSON}))
        assert field in fields_of(assert_problem(r, 422, "validation")), (change, r.text)
    for change, field in [({"role": "root"}, "role"), ({"password": "short"}, "password"), ({"nope": 1}, "nope")]:
        r = await patch(client, tenant, "carol", **change)
        assert field in fields_of(assert_problem(r, 422)), change
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before
    await new_user(client, tenant, "carol", "viewer")
    problem = assert_problem(await client.post(base, json=good, headers=tenant.headers("admin")), 409, "conflict")
    assert "carol" in problem["detail"]
    # Names no user can have are simply not there.
    for name in ("%00", "x" * 300):
        assert_problem(await client.get(f"{base}/{name}", headers=tenant.headers("admin")), 404)
    assert_problem(await patch(client, tenant, "nobody", role="viewer"), 404)


async def test_only_admins_manage_users_and_keys(client, tenant):
    for role in ("viewer", "editor", "steward"):
        h = tenant.headers(role)
        base = f"/tenants/{tenant.tenant_id}"
        for method, path, body in [
            ("GET", f"{base}/users", None),
            ("POST", f"{base}/users", {"username": "x", "password": PASSWORD, "role": "admin"}),
            ("GET", f"{base}/users/x", None),
            ("PATCH", f"{base}/users/x", {"role": "admin"}),
            ("DELETE", f"{base}/users/x", None),
            ("GET", f"{base}/api-keys", None),
            ("POST", f"{base}/api-keys", {"name": "k", "role": "admin"}),
            ("DELETE", f"{base}/api-keys/abc", None),
        ]:
            r = await client.request(method, path, json=body, headers=h)
            assert_problem(r, 403, "forbidden")
        assert_problem(await client.get(f"{base}/users"), 401)


async def test_a_demoted_admin_loses_admin_rights_at_once(client, tenant):
    await new_user(client, tenant, "alice", "admin")
    await new_user(client, tenant, "root", "admin")  # so alice is not the last admin
    token = await login(client, tenant.tenant_id, "alice")
    users = f"/tenants/{tenant.tenant_id}/users"
    assert (await client.get(users, headers=bearer(token))).status_code == 200
    assert (await patch(client, tenant, "alice", role="viewer")).status_code == 200
    # The same token, the very next request: the role of now, not the one in the token.
    assert_problem(await client.get(users, headers=bearer(token)), 403)
    r = await client.get("/auth/validate", headers=bearer(token))
    assert r.status_code == 200 and r.json()["claims"]["roles"] == ["viewer"]
    assert (await client.get("/metadata/search", headers=bearer(token))).status_code == 200
    r = await client.post("/metadata", json={"qualified_name": "pg://x/y", "type": "table"}, headers=bearer(token))
    assert_problem(r, 403)
    # Promoted again, likewise at once.
    assert (await patch(client, tenant, "alice", role="editor")).status_code == 200
    r = await client.post("/metadata", json={"qualified_name": "pg://x/y", "type": "table"}, headers=bearer(token))
    assert r.status_code == 201, r.text


async def test_deleted_and_disabled_users_tokens_are_refused(client, tenant):
    await new_user(client, tenant, "dora", "editor")
    await new_user(client, tenant, "dave", "editor")
    dora, dave = await login(client, tenant.tenant_id, "dora"), await login(client, tenant.tenant_id, "dave")
    assert (await client.get("/auth/validate", headers=bearer(dora))).status_code == 200
    r = await client.delete(f"/tenants/{tenant.tenant_id}/users/dora", headers=tenant.headers("admin"))
    assert r.status_code == 204
    assert_problem(await client.get("/auth/validate", headers=bearer(dora)), 401, "unauthorized")
    # Re-created under the same name, it is another user: the old token stays refused.
    await new_user(client, tenant, "dora", "admin")
    assert_problem(await client.get("/auth/validate", headers=bearer(dora)), 401)

    assert (await patch(client, tenant, "dave", disabled=True)).status_code == 200
    assert_problem(await client.get("/metadata/search", headers=bearer(dave)), 401)
    r = await client.post("/auth/login", json={"tenant_id": tenant.tenant_id, "username": "dave", "password": PASSWORD})
    assert_problem(r, 401)
    # Enabled again: a new login works, the token from before the disabling does not come back.
    assert (await patch(client, tenant, "dave", disabled=False)).status_code == 200
    assert_problem(await client.get("/auth/validate", headers=bearer(dave)), 401)
    fresh = await login(client, tenant.tenant_id, "dave")
    assert (await client.get("/auth/validate", headers=bearer(fresh))).status_code == 200
    # A password change ends the user's sessions too.
    assert (await patch(client, tenant, "dave", password="a brand new password")).status_code == 200
    assert_problem(await client.get("/auth/validate", headers=bearer(fresh)), 401)


async def test_groups_change_takes_effect_at_once(client, tenant):
    await new_user(client, tenant, "gina", "viewer", groups=["finance"])
    token = await login(client, tenant.tenant_id, "gina")
    r = await client.get("/auth/validate", headers=bearer(token))
    assert r.json()["claims"]["groups"] == ["finance"]
    assert (await patch(client, tenant, "gina", groups=["data-eng", "legal"])).status_code == 200
    r = await client.get("/auth/validate", headers=bearer(token))
    assert r.json()["claims"]["groups"] == ["data-eng", "legal"]


async def test_principal_names_for_policies(app, client, tenant):
    from lily.api.deps import authenticate

    await new_user(client, tenant, "pat", "editor", groups=["finance"])
    token = await login(client, tenant.tenant_id, "pat")
    from fastapi.security import HTTPAuthorizationCredentials

    principal = await authenticate(app.state.runtime, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token))
    assert principal.groups == ("finance",)
    assert principal.names == {"everyone", "role:editor", "user:pat", "group:finance"}
    key = await authenticate(
        app.state.runtime, HTTPAuthorizationCredentials(scheme="Bearer", credentials=tenant.keys["viewer"])
    )
    assert key.names == {"everyone", "role:viewer", "apikey:viewer-key"} and key.groups == ()


async def test_the_last_admin_is_protected(client, app, tenant):
    await new_user(client, tenant, "alice", "admin")
    users = f"/tenants/{tenant.tenant_id}/users"
    for change in ({"role": "steward"}, {"disabled": True}):
        problem = assert_problem(await patch(client, tenant, "alice", **change), 409, "conflict")
        assert "last" in problem["detail"]
    assert_problem(await client.delete(f"{users}/alice", headers=tenant.headers("admin")), 409)
    # alice herself cannot either.
    token = await login(client, tenant.tenant_id, "alice")
    r = await client.patch(f"{users}/alice", json={"role": "viewer"}, headers=bearer(token))
    assert_problem(r, 409)
    # Other changes to the last admin are fine, and with a second admin so is demoting her.
    assert (await patch(client, tenant, "alice", groups=["ops"])).status_code == 200
    await new_user(client, tenant, "bob", "admin")
    assert (await patch(client, tenant, "alice", role="viewer")).json()["role"] == "viewer"
    assert_problem(await patch(client, tenant, "bob", disabled=True), 409)
    # A disabled admin does not count as one.
    await new_user(client, tenant, "carl", "admin", disabled=True)
    assert_problem(await client.delete(f"{users}/bob", headers=tenant.headers("admin")), 409)
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT username, role, disabled FROM users ORDER BY username")
        assert [tuple(r.values()) for r in await cur.fetchall()] == [
            ("alice", "viewer", False),
            ("bob", "admin", False),
            ("carl", "admin", True),
        ]


async def test_api_keys_list_create_revoke(client, app, tenant):
    base = f"/tenants/{tenant.tenant_id}/api-keys"
    r = await client.post(base, json={"name": "ci", "role": "editor"}, headers=tenant.headers("admin"))
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith(f"lily_{tenant.tenant_id}.{created['key_id']}.")
    assert (await client.get("/auth/validate", headers=bearer(key))).json()["claims"]["roles"] == ["editor"]
    listed = (await client.get(base, headers=tenant.headers("admin"))).json()["items"]
    assert "ci" in {k["name"] for k in listed}
    assert all("key" not in k for k in listed) and key.split(".")[2] not in str(listed)
    # Paginated by key id.
    page = (await client.get(base, params={"limit": 2}, headers=tenant.headers("admin"))).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = (await client.get(base, params={"cursor": page["next_cursor"]}, headers=tenant.headers("admin"))).json()
    assert {k["key_id"] for k in page["items"] + rest["items"]} == {k["key_id"] for k in listed}

    r = await client.delete(f"{base}/{created['key_id']}", headers=tenant.headers("admin"))
    assert r.status_code == 204, r.text
    assert_problem(await client.get("/auth/validate", headers=bearer(key)), 401, "unauthorized")
    assert created["key_id"] not in {
        k["key_id"] for k in (await client.get(base, headers=tenant.headers("admin"))).json()["items"]
    }
    assert_problem(await client.delete(f"{base}/{created['key_id']}", headers=tenant.headers("admin")), 404)
    assert_problem(await client.delete(f"{base}/nope", headers=tenant.headers("admin")), 404)
    for body, field in [({"name": "", "role": "viewer"}, "name"), ({"name": "k", "role": "root"}, "role")]:
        assert field in fields_of(
            assert_problem(await client.post(base, json=body, headers=tenant.headers("admin")), 422)
        )


async def test_the_last_admin_key_is_protected_when_no_admin_user(client, app, tenant):
    base = f"/tenants/{tenant.tenant_id}/api-keys"
    admin_key_id = tenant.keys["admin"].split(".")[1]
    # The fixture's admin key is the tenant's only admin credential.
    assert_problem(await client.delete(f"{base}/{admin_key_id}", headers=tenant.headers("admin")), 409)
    assert (await client.get("/auth/validate", headers=tenant.headers("admin"))).status_code == 200
    await new_user(client, tenant, "alice", "admin")
    assert (await client.delete(f"{base}/{admin_key_id}", headers=tenant.headers("admin"))).status_code == 204
    assert_problem(await client.get("/auth/validate", headers=tenant.headers("admin")), 401)


async def test_every_users_and_keys_route_is_404_for_another_tenant(client, app, tenant, other_tenant):
    await new_user(client, tenant, "alice", "editor")
    key_id = tenant.keys["viewer"].split(".")[1]
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    mine = f"/tenants/{tenant.tenant_id}"
    for method, path, body in [
        ("GET", f"{mine}/users", None),
        ("POST", f"{mine}/users", {"username": "eve", "password": PASSWORD, "role": "admin"}),
        ("GET", f"{mine}/users/alice", None),
        ("PATCH", f"{mine}/users/alice", {"role": "admin"}),
        ("DELETE", f"{mine}/users/alice", None),
        ("GET", f"{mine}/api-keys", None),
        ("POST", f"{mine}/api-keys", {"name": "k", "role": "admin"}),
        ("DELETE", f"{mine}/api-keys/{key_id}", None),
    ]:
        r = await client.request(method, path, json=body, headers=other_tenant.headers("admin"))
        theirs = assert_problem(r, 404, "not-found")
        unknown = path.replace(f"/tenants/{tenant.tenant_id}", "/tenants/no-such-tenant")
        r = await client.request(method, unknown, json=body, headers=other_tenant.headers("admin"))
        assert assert_problem(r, 404)["title"] == theirs["title"]
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before
    assert (await client.get("/auth/validate", headers=tenant.headers("viewer"))).status_code == 200
    # And a user with the same name in another tenant is another user.
    await new_user(client, other_tenant, "alice", "viewer")
    r = await client.get(f"/tenants/{tenant.tenant_id}/users/alice", headers=tenant.headers("admin"))
    assert r.json()["role"] == "editor"


async def test_changes_are_audited_with_who_made_them(client, app, tenant):
    admin_key_id = tenant.keys["admin"].split(".")[1]
    h = tenant.headers("admin", **{"X-Request-ID": "req-42"})
    base = f"/tenants/{tenant.tenant_id}"
    await client.post(f"{base}/users", json={"username": "al", "password": PASSWORD, "role": "viewer"}, headers=h)
    await client.patch(f"{base}/users/al", json={"role": "editor", "password": "another long one"}, headers=h)
    await client.delete(f"{base}/users/al", headers=h)
    created = (await client.post(f"{base}/api-keys", json={"name": "ci", "role": "viewer"}, headers=h)).json()
    await client.delete(f"{base}/api-keys/{created['key_id']}", headers=h)
    entries = await audit_actions(app, tenant.tenant_id, "user.") + await audit_actions(
        app, tenant.tenant_id, "api_key."
    )
    entries = [e for e in entries if e["request_id"] == "req-42"]
    assert [e["action"] for e in entries] == [
        "user.created",
        "user.updated",
        "user.deleted",
        "api_key.created",
        "api_key.revoked",
    ]
    assert {e["actor"] for e in entries} == {f"key:{admin_key_id}"}
    assert entries[1]["detail"]["changes"] == {"role": {"from": "viewer", "to": "editor"}, "password": "changed"}
    assert entries[4]["detail"] == {"key_id": created["key_id"], "name": "ci"}
    assert "another long one" not in str(entries) and PASSWORD not in str(entries)


async def test_unknown_tenant_tokens_are_refused(client, app, tenant):
    cfg = app.state.runtime.tokens
    now = int(time.time())
    claims = {
        "sub": "user:alice",
        "tenant_id": "ghost",
        "roles": ["admin"],
        "sid": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
        "iss": cfg.issuer,
        "aud": cfg.audience,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, cfg.secret, algorithm="HS256")
    for path in ("/auth/validate", "/metadata/search", "/tenants/ghost/users"):
        assert_problem(await client.get(path, headers=bearer(token)), 401, "unauthorized")
    r = await client.post("/metadata", json={"qualified_name": "pg://g/h", "type": "table"}, headers=bearer(token))
    assert_problem(r, 401)
    async with app.state.runtime.db.system() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM events")
        assert (await cur.fetchone())["n"] == 0  # nothing reached the log
    # Tokens naming a tenant id that cannot exist, or a user name no row can hold, are refused too.
    for change in ({"tenant_id": "Not Valid"}, {"sub": "user:a\x00b"}, {"sub": "key:abc"}, {"sid": 5}):
        token = jwt.encode({**claims, "tenant_id": tenant.tenant_id, **change}, cfg.secret, algorithm="HS256")
        assert_problem(await client.get("/auth/validate", headers=bearer(token)), 401)


async def test_a_deleted_tenant_authenticates_nothing(client, app, tenant, other_tenant):
    await new_user(client, tenant, "alice", "admin")
    token = await login(client, tenant.tenant_id, "alice")
    await admin.delete_tenant(app.state.runtime.db, tenant.tenant_id)
    for role in ("admin", "viewer"):
        assert_problem(await client.get("/auth/validate", headers=tenant.headers(role)), 401)
    assert_problem(await client.get("/metadata/search", headers=bearer(token)), 401)
    r = await client.post(
        "/auth/login", json={"tenant_id": tenant.tenant_id, "username": "alice", "password": PASSWORD}
    )
    assert_problem(r, 401)
    # The other tenant is untouched; the deleted id is not free for a new tenant; deleting twice is 404.
    assert (await client.get("/auth/validate", headers=other_tenant.headers("viewer"))).status_code == 200
    from lily.domain.errors import Conflict, NotFound

    with pytest.raises(Conflict):
        await admin.create_tenant(app.state.runtime.db, tenant.tenant_id)
    with pytest.raises(NotFound):
        await admin.delete_tenant(app.state.runtime.db, tenant.tenant_id)
    with pytest.raises(NotFound):
        await admin.create_user(app.state.runtime.db, tenant.tenant_id, "bob", PASSWORD, "viewer")
    entries = await audit_actions(app, tenant.tenant_id, "tenant.deleted")
    assert [(e["action"], e["actor"]) for e in entries] == [("tenant.deleted", "admin:cli")]


async def test_an_operator_deletes_a_tenant_over_the_api(settings, database_url, app, client, tenant, other_tenant):
    from pydantic import SecretStr

    from lily.api.app import create_app

    operator = settings.model_copy(update={"operator_token": SecretStr("operator-" + "z" * 40)})
    ops_app = create_app(operator, database_url, run_workers=False)
    async with ops_app.router.lifespan_context(ops_app):
        transport = httpx.ASGITransport(app=ops_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as ops:
            path = f"/tenants/{tenant.tenant_id}"
            # A tenant's own admin is no operator, and neither is a wrong token.
            assert_problem(await ops.delete(path, headers=tenant.headers("admin")), 401)
            assert_problem(await ops.delete(path, headers=bearer("operator-wrong")), 401)
            assert_problem(await ops.delete(path), 401)
            # Without an operator token configured the route is closed.
            assert_problem(await client.delete(path, headers=bearer("operator-" + "z" * 40)), 403)
            assert (await ops.get("/auth/validate", headers=tenant.headers("viewer"))).status_code == 200
            r = await ops.delete(path, headers=bearer("operator-" + "z" * 40))
            assert r.status_code == 204, r.text
            assert_problem(await ops.delete(path, headers=bearer("operator-" + "z" * 40)), 404)
            assert_problem(await ops.delete("/tenants/Not_Valid", headers=bearer("operator-" + "z" * 40)), 404)
    # In every API process, from the next request on.
    assert_problem(await client.get("/auth/validate", headers=tenant.headers("viewer")), 401)
    assert (await client.get("/auth/validate", headers=other_tenant.headers("viewer"))).status_code == 200
    entries = await audit_actions(app, tenant.tenant_id, "tenant.deleted")
    assert [e["actor"] for e in entries] == ["operator"]
