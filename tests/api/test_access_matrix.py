"""The access-policy matrix: read/write x deny/allow/except x user/group/role/apikey principals, against
every endpoint that reads or writes an asset, in one app.

Each scenario installs one policy on the asset ``fin.secret`` (tag ``finance``), then asks as a
principal the policy names and as one it does not, and compares each answer with what the rules say
(an oracle written from the issue's semantics, independent of lily.domain.access). Denied reads must be
404 exactly like a missing id, absent from search (items, totals, facets) and impact, redacted in
lineage; refused writes 403 (404 by id for an asset the caller may not read).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from lily import admin as lily_admin

from .helpers import assert_problem, create

PASSWORD = "correct horse battery"
SECRET, UP, DOWN = "pg://h/db.fin.secret", "pg://h/db.pub.up", "pg://h/db.pub.down"
WORD = "zanzibarledger"
ASYNC = {"Prefer": "respond-async"}


@dataclass
class Who:
    label: str
    headers: dict[str, str]
    role: str
    names: frozenset[str]


async def user(client: httpx.AsyncClient, tenant: Any, name: str, role: str, group: str) -> Who:
    r = await client.post(
        f"/tenants/{tenant.tenant_id}/users",
        json={"username": name, "password": PASSWORD, "role": role, "groups": [group]},
        headers=tenant.headers("admin"),
    )
    assert r.status_code == 201, r.text
    r = await client.post("/auth/login", json={"tenant_id": tenant.tenant_id, "username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    return Who(name, headers, role, frozenset({"everyone", f"role:{role}", f"user:{name}", f"group:{group}"}))


def key(token: str, name: str, role: str) -> Who:
    return Who(
        name, {"Authorization": f"Bearer {token}"}, role, frozenset({"everyone", f"role:{role}", f"apikey:{name}"})
    )


def expected(policy: dict[str, Any], who: Who) -> tuple[bool, bool, bool]:
    """(read, write, write anywhere) for ``who`` on the secret asset, from the issue's rules."""
    applies = bool(who.names & set(policy["principals"])) and not (who.names & set(policy.get("except", [])))
    denied = {a for a in policy["actions"] if applies and policy["effect"] == "deny"}
    allowed = {a for a in policy["actions"] if applies and policy["effect"] == "allow"}
    read = "read" not in denied
    baseline_write = who.role in ("editor", "steward", "admin")
    write = read and (baseline_write or "write" in allowed) and "write" not in denied
    return read, write, baseline_write or "write" in allowed


async def check(client: httpx.AsyncClient, ids: dict[str, str], policy: dict[str, Any], who: Who) -> list[str]:
    """Every endpoint's answer for ``who``; the differences from the oracle, as readable lines."""
    read, write, writes_somewhere = expected(policy, who)
    h = who.headers
    s, up = ids[SECRET], ids[UP]
    bad: list[str] = []

    def want(what: str, ok: bool) -> None:
        if not ok:
            bad.append(f"{policy['name']} / {who.label}: {what} (read={read}, write={write})")

    # Reads of the asset itself: 200, or 404 byte for byte like an id that does not exist.
    missing = str(uuid.uuid4())
    for path in ("/metadata/{}", "/metadata/audit/{}", "/metadata/lineage/{}", "/metadata/lineage/{}/impact",
                 "/metadata/access-control/{}"):  # fmt: skip
        r = await client.get(path.format(s), headers=h)
        if read:
            want(f"GET {path} -> {r.status_code}", r.status_code == 200)
        else:
            m = await client.get(path.format(missing), headers=h)
            same = r.status_code == 404 and r.content.replace(s.encode(), b"X") == m.content.replace(
                missing.encode(), b"X"
            )
            want(f"GET {path} -> {r.status_code} {r.text[:80]} (missing: {m.text[:80]})", same)

    # Lineage around it: a redacted node, the graph's shape intact; impact leaves it out.
    g = (await client.get(f"/metadata/lineage/{up}", headers=h)).json()
    node = next((n for n in g["nodes"] if n["asset_id"] == s), None)
    want("lineage node missing", node is not None)
    if node is not None:
        want(f"lineage node {node}", (node.get("redacted") is True and set(node) == {"asset_id", "depth", "redacted"})
             != read)  # fmt: skip
    want("lineage shape", {(e["upstream_id"], e["downstream_id"]) for e in g["edges"]} == {(up, s), (s, ids[DOWN])})
    impact = (await client.get(f"/metadata/lineage/{up}/impact", headers=h)).json()
    want("impact", {a["asset_id"] for a in impact["assets"]} == ({s, ids[DOWN]} if read else {ids[DOWN]}))
    if not read:
        want("impact path", all(p["asset_id"] != s for a in impact["assets"] for p in a["path"]))

    # Search: items, totals and facets.
    r = await client.get("/metadata/search", params={"q": WORD, "total": "true", "facets": "tag,type"}, headers=h)
    body = r.json()
    want(
        f"search {body}", [i["asset_id"] for i in body["items"]] == ([s] if read else []) and body["total"] == int(read)
    )
    tags = {f["value"]: f["count"] for f in body["facets"]["tag"]}
    want(f"facets {tags}", tags == ({"finance": 1} if read else {}))
    listing = await client.get("/metadata/search", params={"tag": "finance", "total": "true"}, headers=h)
    want("listing by tag", listing.json()["total"] == int(read))

    # Writes. A caller that can write nothing at all is refused by the role gate (403) before any
    # asset is looked at; otherwise an asset it may not read is the 404 of a missing id (by id) or the
    # 403 of an unwritable one (by name).
    hidden = 404 if writes_somewhere else 403
    doc = {"type": "table", "name": "secret", "description": f"the {WORD}", "tags": ["finance"]}
    put = await client.put(f"/metadata/{s}", json=doc, headers={**h, **ASYNC})
    want(f"PUT -> {put.status_code}", put.status_code == (202 if write else 403 if read else hidden))
    post = await client.post("/metadata", json={"qualified_name": SECRET, **doc}, headers={**h, **ASYNC})
    want(f"POST -> {post.status_code}", post.status_code == (202 if write else 403))
    if not write:
        if writes_somewhere:
            # Refused alike whether it exists or not: the same problem as for a readable, unwritable asset.
            want(f"POST problem {post.text[:100]}", post.json()["detail"] == f"you may not write asset {SECRET!r}")
        delete = await client.delete(f"/metadata/{s}", headers={**h, **ASYNC})
        want(f"DELETE -> {delete.status_code}", delete.status_code == (403 if read else hidden))
        unlink = await client.delete(f"/metadata/lineage/{s}", headers={**h, **ASYNC})
        want(f"DELETE lineage -> {unlink.status_code}", unlink.status_code == (403 if read else hidden))
    link = {"upstreams": [{"qualified_name": UP}], "downstreams": [{"qualified_name": SECRET}]}
    r = await client.post("/metadata/lineage", json=link, headers={**h, **ASYNC})
    want(f"lineage by name -> {r.status_code}", r.status_code == (202 if write else 403))
    by_id = {"upstreams": [{"asset_id": up}], "downstreams": [{"asset_id": s}]}
    r = await client.post("/metadata/lineage", json=by_id, headers={**h, **ASYNC})
    want(f"lineage by id -> {r.status_code}", r.status_code == (202 if write else 403 if read else hidden))
    r = await client.post("/metadata/bulk", json=[{"qualified_name": SECRET, **doc}], headers=h)
    if not writes_somewhere:
        want(f"bulk -> {r.status_code}", r.status_code == 403)
    else:
        want(f"bulk -> {r.status_code} {r.text[:120]}", r.status_code == 202 and r.json()["rejected"] == int(not write))
    return bad


async def test_policy_matrix(app, client, tenant):
    runtime = app.state.runtime
    extra = {
        name: await lily_admin.create_api_key(runtime.db, tenant.tenant_id, name, role)
        for name, role in (("viewer-2", "viewer"), ("editor-2", "editor"))
    }
    keys = {
        "viewer": key(tenant.keys["viewer"], "viewer-key", "viewer"),
        "editor": key(tenant.keys["editor"], "editor-key", "editor"),
        "steward": key(tenant.keys["steward"], "steward-key", "steward"),
        "viewer-2": key(extra["viewer-2"], "viewer-2", "viewer"),
        "editor-2": key(extra["editor-2"], "editor-2", "editor"),
    }
    users = {
        "vera": await user(client, tenant, "vera", "viewer", "finance"),
        "victor": await user(client, tenant, "victor", "viewer", "ops"),
        "alice": await user(client, tenant, "alice", "editor", "finance"),
        "bob": await user(client, tenant, "bob", "editor", "ops"),
    }
    admin_h = tenant.headers("admin")
    ids = {}
    for qn, tags in ((UP, []), (SECRET, ["finance"]), (DOWN, [])):
        doc = await create(client, admin_h, qn, name=qn.rsplit(".", 1)[1], description=f"the {WORD}" if qn == SECRET
                           else "plain", tags=tags)  # fmt: skip
        ids[qn] = doc["asset_id"]
    for a, b in ((UP, SECRET), (SECRET, DOWN)):
        r = await client.post(
            "/metadata/lineage",
            json={"upstreams": [{"qualified_name": a}], "downstreams": [{"qualified_name": b}]},
            headers=admin_h,
        )
        assert r.status_code == 201, r.text

    def kinds(role: str) -> dict[str, tuple[str, list[Who]]]:
        """Per principal kind: the principal a policy names, and (one it names, one it does not)."""
        named, other = (users["vera"], users["victor"]) if role == "viewer" else (users["alice"], users["bob"])
        return {
            "user": (f"user:{named.label}", [named, other]),
            "group": ("group:finance", [named, other]),
            "role": (f"role:{role}", [keys[role], keys["editor" if role == "viewer" else "steward"]]),
            "apikey": (f"apikey:{role}-key", [keys[role], keys[f"{role}-2"]]),
        }

    scenarios = []
    for kind, (p, whom) in kinds("viewer").items():
        scenarios.append(({"effect": "deny", "actions": ["read"], "principals": [p]}, whom, kind))
        scenarios.append(
            ({"effect": "deny", "actions": ["read"], "principals": ["everyone"], "except": [p]}, whom, kind)
        )
        scenarios.append(({"effect": "allow", "actions": ["write"], "principals": [p]}, whom, kind))
    for kind, (p, whom) in kinds("editor").items():
        scenarios.append(({"effect": "deny", "actions": ["write"], "principals": [p]}, whom, kind))

    failures: list[str] = []
    for n, (rule, whom, kind) in enumerate(scenarios):
        policy = {
            "name": f"{n} {rule['effect']} {rule['actions'][0]} {kind}",
            **rule,
            "resources": {"tags": ["finance"]},
        }
        r = await client.post("/metadata/access-control", json=policy, headers=tenant.headers("steward"))
        assert r.status_code == 201, r.text
        for who in whom:
            failures += await check(client, ids, policy, who)
        gone = await client.delete(f"/metadata/access-control/policies/{r.json()['policy_id']}", headers=admin_h)
        assert gone.status_code == 204
    assert not failures, "\n".join(failures)


async def test_govern_follows_policies(client, tenant):
    asset = await create(client, tenant.headers("admin"), SECRET, tags=["finance"])
    url = f"/metadata/access-control/{asset['asset_id']}"
    for effect, principal, who, allowed in (
        ("allow", "role:editor", "editor", True),
        ("allow", "role:editor", "viewer", False),
        ("deny", "role:steward", "steward", False),
        ("deny", "apikey:admin-key", "admin", True),  # admin is never locked out
    ):
        policy = {"name": f"{effect} {principal}", "effect": effect, "actions": ["govern"], "principals": [principal],
                  "resources": {"asset_ids": [asset["asset_id"]]}}  # fmt: skip
        created = await client.post("/metadata/access-control", json=policy, headers=tenant.headers("steward"))
        assert created.status_code == 201, created.text
        govern = (await client.get(url, headers=tenant.headers(who))).json()["actions"]["govern"]
        assert govern["allowed"] is allowed, (policy, who, govern)
        if effect == "deny" or allowed:
            assert govern["policy_id"] == created.json()["policy_id"]
        await client.delete(f"/metadata/access-control/policies/{created.json()['policy_id']}",
                            headers=tenant.headers("admin"))  # fmt: skip


async def test_admin_reads_past_a_deny_and_it_is_audited(client, tenant):
    asset = await create(client, tenant.headers("admin"), SECRET, tags=["finance"])
    policy = {"name": "nobody", "effect": "deny", "actions": ["read", "write"], "principals": ["everyone"],
              "resources": {"qualified_name_prefix": "pg://h/db.fin."}}  # fmt: skip
    created = await client.post("/metadata/access-control", json=policy, headers=tenant.headers("steward"))
    assert created.status_code == 201
    for role in ("viewer", "editor", "steward"):
        assert_problem(await client.get(f"/metadata/{asset['asset_id']}", headers=tenant.headers(role)), 404)
    r = await client.get(f"/metadata/{asset['asset_id']}", headers=tenant.headers("admin"))
    assert r.status_code == 200
    async with client._transport.app.state.runtime.db.tenant(tenant.tenant_id) as conn:  # type: ignore[attr-defined]
        cur = await conn.execute(
            "SELECT asset_id::text, actor, detail FROM audit_log WHERE action = 'access.admin_override'"
        )
        rows = await cur.fetchall()
    assert rows == [
        {"asset_id": asset["asset_id"], "actor": rows[0]["actor"],
         "detail": {"access": "read", "policies": [created.json()["policy_id"]]}}
    ]  # fmt: skip
    # A new asset under a denied prefix cannot be created by a non-admin either (nothing existed there).
    r = await client.post("/metadata", json={"qualified_name": "pg://h/db.fin.new", "type": "table"},
                          headers=tenant.headers("editor"))  # fmt: skip
    assert_problem(r, 403)


async def test_policies_are_tenant_scoped_in_enforcement(client, tenant, other_tenant):
    """A policy of one tenant hides nothing in another, even for the same principal names."""
    mine = await create(client, tenant.headers("admin"), SECRET, tags=["finance"])
    theirs = await create(client, other_tenant.headers("admin"), SECRET, tags=["finance"])
    policy = {"name": "hide", "effect": "deny", "actions": ["read"], "principals": ["everyone"],
              "resources": {"tags": ["finance"]}}  # fmt: skip
    assert (
        await client.post("/metadata/access-control", json=policy, headers=tenant.headers("admin"))
    ).status_code == 201
    assert_problem(await client.get(f"/metadata/{mine['asset_id']}", headers=tenant.headers("viewer")), 404)
    r = await client.get(f"/metadata/{theirs['asset_id']}", headers=other_tenant.headers("viewer"))
    assert r.status_code == 200
    found = await client.get("/metadata/search", params={"tag": "finance"}, headers=other_tenant.headers("viewer"))
    assert [i["asset_id"] for i in found.json()["items"]] == [theirs["asset_id"]]
