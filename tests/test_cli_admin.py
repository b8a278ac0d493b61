"""``lily admin`` for users, API keys and tenants, run as the real command against the test database."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.test_cli import env, lily  # noqa: F401  (env is a fixture)

PASSWORD = "a-long-password"


def ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    out: str = result.stdout
    return out


def refused(result: Any, *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


async def test_users_from_the_cli(env: dict[str, str], client: httpx.AsyncClient) -> None:  # noqa: F811
    ok(lily(env, "admin", "create-tenant", "initech"))
    args = ("admin", "create-user", "initech")
    ok(lily(env, *args, "alice", "--role", "admin", "--group", "finance", "--password-stdin", stdin=PASSWORD))
    ok(lily(env, *args, "bob", "--role", "viewer", "--password-stdin", stdin=PASSWORD))
    users = json.loads(ok(lily(env, "admin", "list-users", "initech", "--json")))
    assert users == [
        {"username": "alice", "role": "admin", "groups": ["finance"], "disabled": False},
        {"username": "bob", "role": "viewer", "groups": [], "disabled": False},
    ]
    assert ok(lily(env, "admin", "list-users", "initech")).splitlines() == [
        "alice\tadmin\tfinance\tFalse",
        "bob\tviewer\t\tFalse",
    ]
    login = {"tenant_id": "initech", "username": "bob", "password": PASSWORD}
    token = (await client.post("/auth/login", json=login)).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/auth/validate", headers=bearer)).json()["claims"]["roles"] == ["viewer"]

    out = ok(lily(env, "admin", "update-user", "initech", "bob", "--role", "editor", "--group", "a", "--group", "b"))
    assert out.strip() == "bob\teditor\ta,b\tFalse"
    claims = (await client.get("/auth/validate", headers=bearer)).json()["claims"]
    assert claims["roles"] == ["editor"] and claims["groups"] == ["a", "b"]
    ok(lily(env, "admin", "update-user", "initech", "bob", "--disable"))
    assert (await client.get("/auth/validate", headers=bearer)).status_code == 401
    ok(
        lily(
            env,
            "admin",
            "update-user",
            "initech",
            "bob",
            "--enable",
            "--no-groups",
            "--password-stdin",
            stdin="new-password-1",
        )
    )
    assert (await client.post("/auth/login", json=login)).status_code == 401
    assert (await client.post("/auth/login", json={**login, "password": "new-password-1"})).status_code == 200
    ok(lily(env, "admin", "delete-user", "initech", "bob"))
    assert [u["username"] for u in json.loads(ok(lily(env, "admin", "list-users", "initech", "--json")))] == ["alice"]

    # Refusals: non-zero exit, a message on stderr, nothing changed.
    refused(lily(env, "admin", "update-user", "initech", "alice", "--role", "viewer"), "last")
    refused(lily(env, "admin", "delete-user", "initech", "alice"), "last")
    refused(lily(env, "admin", "delete-user", "initech", "nobody"), "nobody")
    refused(lily(env, "admin", "update-user", "initech", "alice", "--group", "bad group"), "group")
    refused(lily(env, "admin", "list-users", "nope"), "nope")
    refused(lily(env, "admin", "create-user", "initech", "a/b", "--role", "viewer", "--password-stdin", stdin=PASSWORD))
    assert json.loads(ok(lily(env, "admin", "list-users", "initech", "--json")))[0]["role"] == "admin"


async def test_keys_and_tenants_from_the_cli(env: dict[str, str], client: httpx.AsyncClient) -> None:  # noqa: F811
    ok(lily(env, "admin", "create-tenant", "initech"))
    key = ok(lily(env, "admin", "create-api-key", "initech", "ci", "--role", "admin")).strip()
    key_id = key.split(".")[1]
    keys = json.loads(ok(lily(env, "admin", "list-api-keys", "initech", "--json")))
    assert [(k["key_id"], k["name"], k["role"]) for k in keys] == [(key_id, "ci", "admin")]
    assert key.split(".")[2] not in ok(lily(env, "admin", "list-api-keys", "initech"))
    bearer = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/auth/validate", headers=bearer)).status_code == 200
    # An operator may revoke even the tenant's last admin key (the API refuses that).
    ok(lily(env, "admin", "revoke-api-key", "initech", key_id))
    assert (await client.get("/auth/validate", headers=bearer)).status_code == 401
    assert json.loads(ok(lily(env, "admin", "list-api-keys", "initech", "--json"))) == []
    refused(lily(env, "admin", "revoke-api-key", "initech", key_id), key_id)

    second = ok(lily(env, "admin", "create-api-key", "initech", "ci2", "--role", "viewer")).strip()
    assert (await client.get("/auth/validate", headers={"Authorization": f"Bearer {second}"})).status_code == 200
    refused(lily(env, "admin", "delete-tenant", "initech"))  # asks first; no answer is no
    ok(lily(env, "admin", "delete-tenant", "initech", "--yes"))
    assert (await client.get("/auth/validate", headers={"Authorization": f"Bearer {second}"})).status_code == 401
    refused(lily(env, "admin", "delete-tenant", "initech", "--yes"), "initech")
    refused(lily(env, "admin", "create-api-key", "initech", "k", "--role", "viewer"), "initech")
    refused(lily(env, "admin", "create-tenant", "initech"), "initech")
