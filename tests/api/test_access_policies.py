"""``/metadata/access-control``: policies (create, read, list, replace, delete), their bounds and bad
input, who may manage them, isolation across tenants, and the audit of every change."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from lily.domain.access import MAX_POLICIES

from .helpers import assert_problem, create, fields_of

BASE = "/metadata/access-control"


def policy(**over: Any) -> dict[str, Any]:
    return {
        "name": "finance only",
        "effect": "deny",
        "actions": ["read"],
        "principals": ["everyone"],
        "except": ["group:finance"],
        "resources": {"tags": ["finance"]},
        **over,
    }


async def make(client: httpx.AsyncClient, tenant: Any, role: str = "steward", **over: Any) -> dict[str, Any]:
    r = await client.post(BASE, json=policy(**over), headers=tenant.headers(role))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_create_read_list_replace_delete(client, tenant):
    created = await make(client, tenant, resources={"tags": ["finance", "finance"], "types": ["Table"]})
    pid = created["policy_id"]
    assert created["effect"] == "deny" and created["except"] == ["group:finance"]
    # Lists come back sorted and unique; types lower-cased; absent criteria are null.
    assert {k: v for k, v in created["resources"].items() if v is not None} == {"tags": ["finance"], "types": ["table"]}
    assert created["version"] == 1 and created["created_by"].startswith("key:")

    got = await client.get(f"{BASE}/policies/{pid}", headers=tenant.headers("steward"))
    assert got.status_code == 200 and got.json() == created

    # A GET document can be PUT back (with an edit); version acts as If-Match.
    doc = {**got.json(), "actions": ["read", "write"]}
    r = await client.put(f"{BASE}/policies/{pid}", json=doc, headers=tenant.headers("steward"))
    assert r.status_code == 200, r.text
    assert r.json()["actions"] == ["read", "write"] and r.json()["version"] == 2
    stale = await client.put(f"{BASE}/policies/{pid}", json=doc, headers=tenant.headers("steward"))
    assert_problem(stale, 412)
    changed = {**r.json(), "created_by": "someone else"}
    assert "created_by" in fields_of(
        assert_problem(await client.put(f"{BASE}/policies/{pid}", json=changed, headers=tenant.headers("admin")), 422)
    )

    second = await make(client, tenant, name="second")
    page1 = await client.get(f"{BASE}/policies", params={"limit": 1}, headers=tenant.headers("steward"))
    assert page1.status_code == 200 and len(page1.json()["items"]) == 1 and page1.json()["next_cursor"]
    page2 = await client.get(
        f"{BASE}/policies",
        params={"limit": 1, "cursor": page1.json()["next_cursor"]},
        headers=tenant.headers("steward"),
    )
    ids = {page1.json()["items"][0]["policy_id"], page2.json()["items"][0]["policy_id"]}
    assert ids == {pid, second["policy_id"]} and page2.json()["next_cursor"] is None

    assert (await client.delete(f"{BASE}/policies/{pid}", headers=tenant.headers("steward"))).status_code == 204
    assert_problem(await client.get(f"{BASE}/policies/{pid}", headers=tenant.headers("steward")), 404)
    assert_problem(await client.delete(f"{BASE}/policies/{pid}", headers=tenant.headers("steward")), 404)

    # Every change is audited with the policy as it was.
    async with client._transport.app.state.runtime.db.tenant(tenant.tenant_id) as conn:  # type: ignore[attr-defined]
        cur = await conn.execute(
            "SELECT action, actor, detail FROM audit_log WHERE action LIKE 'access_policy.%%' ORDER BY audit_id"
        )
        rows = await cur.fetchall()
    assert [r["action"] for r in rows] == [
        "access_policy.created",
        "access_policy.replaced",
        "access_policy.created",
        "access_policy.deleted",
    ]
    assert rows[1]["detail"]["before"]["actions"] == ["read"] and rows[1]["detail"]["after"]["version"] == 2


async def test_only_stewards_and_admins_manage_policies(client, tenant):
    for role in ("viewer", "editor"):
        assert_problem(await client.post(BASE, json=policy(), headers=tenant.headers(role)), 403)
        assert_problem(await client.get(f"{BASE}/policies", headers=tenant.headers(role)), 403)
    assert (await client.post(BASE, json=policy(), headers=tenant.headers("admin"))).status_code == 201
    assert_problem(await client.post(BASE, json=policy(), headers=tenant.headers("admin")), 409)  # name taken


BAD = [
    (policy(effect="maybe"), "effect"),
    (policy(actions=[]), "actions"),
    (policy(actions=["delete"]), "actions"),
    (policy(principals=[]), "principals"),
    (policy(principals=["bob"]), "principals"),
    (policy(principals=["role:owner"]), "principals"),
    (policy(principals=["user:a\x00b"]), "principals"),
    (policy(principals=[f"user:u{i}" for i in range(101)]), "principals"),
    (policy(**{"except": ["nobody"]}), "except"),
    (policy(resources={}), "resources"),
    (policy(resources={"tags": []}), "tags"),
    (policy(resources={"tags": [f"t{i}" for i in range(101)]}), "tags"),
    (policy(resources={"asset_ids": ["not-a-uuid"]}), "asset_ids"),
    (policy(resources={"qualified_name_prefix": "x" * 1025}), "qualified_name_prefix"),
    (policy(resources={"colour": ["red"]}), "colour"),
    (policy(name=""), "name"),
    (policy(name="x" * 201), "name"),
    ({**policy(), "priority": 1}, "priority"),
]


async def test_bad_policies_are_refused_naming_the_field(client, tenant):
    for body, field in BAD:
        r = await client.post(BASE, json=body, headers=tenant.headers("steward"))
        problem = assert_problem(r, 422)
        assert any(field in f for f in fields_of(problem)), (field, problem)
    listed = await client.get(f"{BASE}/policies", headers=tenant.headers("steward"))
    assert listed.json()["items"] == []  # nothing of it was stored


async def test_policies_per_tenant_are_bounded(client, tenant):
    db = client._transport.app.state.runtime.db
    async with db.tenant(tenant.tenant_id) as conn:
        await conn.execute(
            "INSERT INTO access_policies (tenant_id, name, effect, actions, principals, tags, created_by, updated_by)"
            " SELECT %s, 'p' || i, 'deny', '{read}', '{user:nobody}', '{x}', 't', 't' FROM generate_series(1, %s) i",
            [tenant.tenant_id, MAX_POLICIES],
        )
    assert_problem(await client.post(BASE, json=policy(), headers=tenant.headers("steward")), 413)


async def test_other_tenants_policies_answer_404_like_missing_ones(client, tenant, other_tenant):
    theirs = await make(client, other_tenant)
    mine = await make(client, tenant, name="mine")
    asset = await create(client, other_tenant.headers("editor"), "pg://x/db.s.theirs")
    for path in (f"{BASE}/policies/{theirs['policy_id']}", f"{BASE}/policies/{uuid.uuid4()}"):
        get = await client.get(path, headers=tenant.headers("admin"))
        put = await client.put(path, json=policy(name="x"), headers=tenant.headers("admin"))
        delete = await client.delete(path, headers=tenant.headers("admin"))
        for r in (get, put, delete):
            body = assert_problem(r, 404)
            assert body["detail"] == f"access policy {path.rsplit('/', 1)[1]} does not exist"
    listed = await client.get(f"{BASE}/policies", headers=tenant.headers("admin"))
    assert [p["policy_id"] for p in listed.json()["items"]] == [mine["policy_id"]]
    missing_id = str(uuid.uuid4())
    foreign = await client.get(f"{BASE}/{asset['asset_id']}", headers=tenant.headers("admin"))
    missing = await client.get(f"{BASE}/{missing_id}", headers=tenant.headers("admin"))
    assert_problem(foreign, 404)
    assert_problem(missing, 404)
    assert foreign.content.replace(asset["asset_id"].encode(), b"X") == missing.content.replace(
        missing_id.encode(), b"X"
    )
    # The other tenant's policy is untouched.
    still = await client.get(f"{BASE}/policies/{theirs['policy_id']}", headers=other_tenant.headers("steward"))
    assert still.status_code == 200 and still.json()["version"] == 1


async def test_asset_access_explains_each_action(client, tenant):
    asset = await create(client, tenant.headers("editor"), "pg://x/db.fin.ledger", tags=["finance"])
    deny = await make(client, tenant, name="no finance writes", actions=["write"], principals=["role:editor"])
    allow = await make(
        client, tenant, name="viewers govern", effect="allow", actions=["govern"], principals=["role:viewer"],
        **{"except": []},
    )  # fmt: skip
    r = await client.get(f"{BASE}/{asset['asset_id']}", headers=tenant.headers("editor"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["principal"].startswith("key:") and body["role"] == "editor"
    assert body["actions"]["read"] == {"allowed": True, "reason": "role", "policy_id": None, "policy_name": None}
    assert body["actions"]["write"] == {
        "allowed": False, "reason": "deny", "policy_id": deny["policy_id"], "policy_name": "no finance writes",
    }  # fmt: skip
    assert body["actions"]["govern"]["allowed"] is False
    assert {p["policy_id"]: p["applies_to_principal"] for p in body["policies"]} == {
        deny["policy_id"]: True,
        allow["policy_id"]: False,
    }
    # Stewards may ask for someone else; others may not.
    viewer = await client.get(
        f"{BASE}/{asset['asset_id']}", params={"principal": "role:viewer"}, headers=tenant.headers("steward")
    )
    assert viewer.json()["actions"]["govern"]["reason"] == "allow"
    assert viewer.json()["actions"]["write"] == {"allowed": False, "reason": "role", "policy_id": None,
                                                 "policy_name": None}  # fmt: skip
    key = await client.get(
        f"{BASE}/{asset['asset_id']}", params={"principal": "apikey:editor-key"}, headers=tenant.headers("steward")
    )
    assert key.json()["actions"]["write"]["reason"] == "deny"
    assert_problem(
        await client.get(
            f"{BASE}/{asset['asset_id']}", params={"principal": "role:viewer"}, headers=tenant.headers("editor")
        ),
        403,
    )
    for unknown in ("user:nobody", "apikey:nope", "group:x", "role:owner", "bob"):
        problem = assert_problem(
            await client.get(
                f"{BASE}/{asset['asset_id']}", params={"principal": unknown}, headers=tenant.headers("steward")
            ),
            422,
        )
        assert fields_of(problem) == {"principal"} or problem.get("field") == "principal", problem
