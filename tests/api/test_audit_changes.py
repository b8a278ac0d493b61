"""Tenant-configuration changes and logouts are audited the way asset changes are: action, actor,
request id and what changed, in the transaction of the change; a change that alters nothing leaves no
entry; each tenant's entries stay its own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lily import admin
from lily.domain.audit import changed_paths, config_replaced

PASSWORD = "correct horse battery staple"


async def entries(app: Any, tenant_id: str, action: str) -> list[dict[str, Any]]:
    async with app.state.runtime.db.tenant(tenant_id) as conn:
        cur = await conn.execute(
            "SELECT action, actor, request_id, detail FROM audit_log WHERE action = %s ORDER BY audit_id", [action]
        )
        return list(await cur.fetchall())


async def test_config_change_is_audited_with_what_changed(client, app, tenant, other_tenant):
    url = f"/tenants/{tenant.tenant_id}/config"
    r = await client.put(
        url,
        json={"propagation": {"enabled": False, "max_depth": 10}},
        headers=tenant.headers("admin", **{"X-Request-ID": "req-config-1"}),
    )
    assert r.status_code == 200, r.text
    (entry,) = await entries(app, tenant.tenant_id, "tenant.config_replaced")
    assert entry["request_id"] == "req-config-1"
    assert entry["actor"].startswith("key:")
    assert entry["detail"]["changed"] == ["propagation.enabled"]
    assert entry["detail"]["from"]["propagation"] == {"enabled": True, "max_depth": 10}
    assert entry["detail"]["to"]["propagation"] == {"enabled": False, "max_depth": 10}

    # The same configuration again: answered as usual, but nothing changed, so nothing is audited.
    r = await client.put(url, json={"propagation": {"enabled": False}}, headers=tenant.headers("admin"))
    assert r.status_code == 200 and r.json()["config"]["propagation"]["enabled"] is False
    assert len(await entries(app, tenant.tenant_id, "tenant.config_replaced")) == 1
    # Another tenant's log has none of it.
    assert await entries(app, other_tenant.tenant_id, "tenant.config_replaced") == []


async def test_a_refused_config_change_leaves_no_entry(client, app, tenant, other_tenant):
    url = f"/tenants/{tenant.tenant_id}/config"
    r = await client.put(url, json={"propagation": {"max_depth": 0}}, headers=tenant.headers("admin"))
    assert r.status_code == 422
    r = await client.put(url, json={"propagation": {"enabled": False}}, headers=other_tenant.headers("admin"))
    assert r.status_code == 404
    assert await entries(app, tenant.tenant_id, "tenant.config_replaced") == []
    assert await entries(app, other_tenant.tenant_id, "tenant.config_replaced") == []


async def test_logout_is_audited_with_its_request(client, app, tenant):
    await admin.create_user(app.state.runtime.db, tenant.tenant_id, "alice", PASSWORD, "editor")
    r = await client.post(
        "/auth/login", json={"tenant_id": tenant.tenant_id, "username": "alice", "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    r = await client.post("/auth/logout", headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-logout-1"})
    assert r.status_code == 204, r.text
    (entry,) = await entries(app, tenant.tenant_id, "auth.logout")
    assert (entry["actor"], entry["request_id"]) == ("user:alice", "req-logout-1")
    assert entry["detail"]["changed"] == ["session"] and entry["detail"]["jti"]
    # A second logout with the revoked token is refused and changes nothing.
    r = await client.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert len(await entries(app, tenant.tenant_id, "auth.logout")) == 1


def test_changed_paths_name_nested_members() -> None:
    before = {"propagation": {"enabled": True, "max_depth": 10}, "x": 1}
    assert changed_paths(before, before) == []
    assert changed_paths(before, {"propagation": {"enabled": True, "max_depth": 3}}) == ["propagation.max_depth", "x"]
    now = datetime.now(UTC)
    assert config_replaced(before, dict(before), actor="a", request_id=None, at=now) is None
