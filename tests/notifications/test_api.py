"""The notifications API: roles, write-only secrets (never in responses or logs), secret rotation,
bad input, the address guard, and isolation between tenants."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from lily.crypto import Keyring, SecretKeyError, generate_key
from lily.store.sealed import check_keys

from .conftest import SECRET_KEY
from .receivers import eventually, receiver
from .test_webhooks import delivery, make_webhook, notify, settled


async def test_only_stewards_and_admins_manage_notifications(client: httpx.AsyncClient, tenant: Any) -> None:
    for role in ("viewer", "editor"):
        r = await client.get("/notifications/channels", headers=tenant.headers(role))
        assert r.status_code == 403
    for role in ("steward", "admin"):
        r = await client.get("/notifications/channels", headers=tenant.headers(role))
        assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    assert (await client.get("/notifications/deliveries")).status_code == 401


async def test_secrets_are_write_only_and_never_logged(
    client: httpx.AsyncClient, tenant: Any, caplog: pytest.LogCaptureFixture, app: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    h = tenant.headers("steward")
    token = "xoxb-" + uuid.uuid4().hex
    hook_path = "/services/T000/B000/" + uuid.uuid4().hex
    with receiver() as slack:
        r = await client.post(
            "/notifications/channels",
            json={"name": "s", "type": "slack", "config": {"webhook_url": slack.url + hook_path}},
            headers=h,
        )
        assert r.status_code == 201
        made = r.json()
        r = await client.post(
            "/notifications/channels",
            json={"name": "t", "type": "slack", "config": {"token": token, "channel": "#c", "base_url": slack.url}},
            headers=h,
        )
        secret_channel = r.json()
        webhook = await make_webhook(client, h, slack.url + "/w")
        await settled(client, h, await notify(client, h, made["id"]), "delivered")
        await settled(client, h, await notify(client, h, secret_channel["id"]), "dead")  # no JSON "ok": refused
        seen = [
            (await client.get("/notifications/channels", headers=h)).text,
            (await client.get(f"/notifications/channels/{made['id']}", headers=h)).text,
            (await client.get("/notifications/deliveries", headers=h)).text,
            (await client.get(f"/notifications/channels/{webhook['id']}", headers=h)).text,
        ]
    for text in seen:
        assert hook_path not in text and token not in text and webhook["signing_secret"] not in text
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert hook_path not in logged and token not in logged and webhook["signing_secret"] not in logged
    # At rest too: the database holds sealed values only.
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT config::text AS c, secrets_sealed FROM notification_channels")
        rows = await cur.fetchall()
    assert all(token not in r["c"] and token not in r["secrets_sealed"] for r in rows)
    assert all(hook_path not in r["c"] and hook_path not in r["secrets_sealed"] for r in rows)


async def test_get_edit_put_keeps_secrets_and_a_type_change_is_refused(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    with receiver() as hook:
        made = await make_webhook(client, h, hook.url + "/a")
        got = (await client.get(f"/notifications/channels/{made['id']}", headers=h)).json()
        got["name"] = "renamed"
        got["config"]["url"] = hook.url + "/b"
        r = await client.put(f"/notifications/channels/{made['id']}", json=got, headers=h)
        assert r.status_code == 200 and r.json()["name"] == "renamed" and r.json()["signing_secret"] is None
        await settled(client, h, await notify(client, h, made["id"]), "delivered")
        (request,) = hook.received("/b")
        Webhook(made["signing_secret"]).verify(request.body, request.headers)  # the same secret signs
    got["type"] = "slack"
    r = await client.put(f"/notifications/channels/{made['id']}", json=got, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "type"


async def test_rotation_signs_with_both_secrets_during_the_overlap(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    with receiver() as hook:
        made = await make_webhook(client, h, hook.url)
        r = await client.post(f"/notifications/channels/{made['id']}/rotate-secret", headers=h)
        assert r.status_code == 200, r.text
        fresh = r.json()["signing_secret"]
        assert fresh.startswith("whsec_") and fresh != made["signing_secret"]
        await settled(client, h, await notify(client, h, made["id"]), "delivered")
        (request,) = hook.received()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (made["signing_secret"], fresh):
        Webhook(secret).verify(request.body, request.headers)
    slack = await client.post(
        "/notifications/channels",
        json={"name": "s", "type": "slack", "config": {"webhook_url": "https://hooks.example.com/x"}},
        headers=h,
    )
    r = await client.post(f"/notifications/channels/{slack.json()['id']}/rotate-secret", headers=h)
    assert r.status_code == 409


async def test_bad_input_names_the_field(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    cases = [
        ("/notifications/channels", {"name": "x", "type": "carrier-pigeon", "config": {}}, "type"),
        ("/notifications/channels", {"name": "x", "type": "webhook", "config": {"url": "not a url"}}, "config.url"),
        ("/notifications/channels", {"name": "x", "type": "webhook", "config": {}, "extra": 1}, "extra"),
        ("/notifications/subscriptions", {"channel_id": str(uuid.uuid4()), "event_types": ["asset.*"]}, "channel_id"),
        ("/notifications/subscriptions", {"channel_id": str(uuid.uuid4()), "event_types": ["Asset!"]}, "event_types"),
        ("/metadata/notifications", {"channel_id": str(uuid.uuid4()), "title": "t", "message": "m"}, "channel_id"),
    ]
    for path, body, field in cases:
        r = await client.post(path, json=body, headers=h)
        assert r.status_code == 422, (path, r.text)
        fields = {e["field"] for e in r.json().get("errors", [])} | {r.json().get("field")}
        assert any(f and (f == field or f.endswith("." + field) or f.startswith(field)) for f in fields), r.text
    with receiver() as hook:
        made = await make_webhook(client, h, hook.url)
        r = await client.post(
            "/notifications/channels", json={"name": "hook", "type": "webhook", "config": {"url": hook.url}}, headers=h
        )
        assert r.status_code == 409
        r = await client.post(
            "/metadata/notifications",
            json={"channel_id": made["id"], "asset_id": str(uuid.uuid4()), "title": "t", "message": "m"},
            headers=h,
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "asset_id"


async def test_every_endpoint_hides_other_tenants(client: httpx.AsyncClient, tenant: Any, other_tenant: Any) -> None:
    mine, theirs = tenant.headers("steward"), other_tenant.headers("steward")
    with receiver() as hook:
        channel = await make_webhook(client, mine, hook.url)
        sub = (
            await client.post(
                "/notifications/subscriptions", json={"channel_id": channel["id"], "event_types": ["*"]}, headers=mine
            )
        ).json()
        delivery_id = await notify(client, mine, channel["id"])
        await settled(client, mine, delivery_id, "delivered")
    missing = str(uuid.uuid4())
    cases = [
        ("GET", "/notifications/channels/{}", channel["id"], None),
        ("PUT", "/notifications/channels/{}", channel["id"], {"name": "x", "config": {"url": "https://x.example"}}),
        ("POST", "/notifications/channels/{}/rotate-secret", channel["id"], None),
        ("DELETE", "/notifications/channels/{}", channel["id"], None),
        ("GET", "/notifications/subscriptions/{}", sub["id"], None),
        ("PUT", "/notifications/subscriptions/{}", sub["id"], {"channel_id": channel["id"], "event_types": ["*"]}),
        ("DELETE", "/notifications/subscriptions/{}", sub["id"], None),
        ("GET", "/notifications/deliveries/{}", delivery_id, None),
        ("POST", "/notifications/deliveries/{}/retry", delivery_id, None),
    ]
    for method, path, their_id, body in cases:
        a = await client.request(method, path.format(their_id), json=body, headers=theirs)
        b = await client.request(method, path.format(missing), json=body, headers=theirs)
        assert a.status_code == b.status_code == 404, (method, path, a.text)
        assert a.content == b.content
    # Lists and sends see nothing of the other tenant.
    for path in ("/notifications/channels", "/notifications/subscriptions", "/notifications/deliveries"):
        assert (await client.get(path, headers=theirs)).json()["items"] == []
    r = await client.post(
        "/metadata/notifications", json={"channel_id": channel["id"], "title": "t", "message": "m"}, headers=theirs
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "channel_id"
    r = await client.post("/notifications/deliveries/retry", json={"channel_id": channel["id"]}, headers=theirs)
    assert r.json() == {"replayed": 0}
    # Still all there for the owner.
    assert (await delivery(client, mine, delivery_id))["state"] == "delivered"


async def test_the_guard_refuses_loopback_when_private_targets_are_not_allowed() -> None:
    from lily.dispatch.channels.webhook import WebhookChannel
    from lily.netguard import guarded_client
    from lily.plugins.config import plugin_config
    from lily.plugins.protocols import DeliveryContext

    with receiver() as hook:
        async with guarded_client(allow_private=False, timeout=2) as http:
            ctx = DeliveryContext(http=http, timeout=2, message_id="m", attempt=1, tenant_id="t", channel_id="c")
            config = plugin_config(WebhookChannel(), {"url": hook.url.replace("127.0.0.1", "localhost")})
            result = await WebhookChannel().deliver(ctx, config, {"type": "x.y"})
        assert not result.ok and result.permanent and "loopback" in (result.error or "")
        assert hook.received() == []


async def test_a_process_without_the_key_refuses_to_start(client: httpx.AsyncClient, tenant: Any, app: Any) -> None:
    h = tenant.headers("steward")
    await make_webhook(client, h, "https://hooks.example.com/x")
    db = app.state.runtime.db
    await check_keys(db, Keyring.from_keys(SECRET_KEY))  # the right key: fine
    with pytest.raises(SecretKeyError) as err:
        await check_keys(db, Keyring.from_keys(generate_key()))
    message = str(err.value)
    assert "notification_channels.secrets_sealed" in message and "LILY_SECRET_KEY" in message
    assert SECRET_KEY not in message


async def test_reseal_moves_secrets_to_the_new_key(client: httpx.AsyncClient, tenant: Any, app: Any) -> None:
    from lily.store.sealed import reseal_all

    h = tenant.headers("steward")
    made = await make_webhook(client, h, "https://hooks.example.com/x")
    new = generate_key()
    rotated = Keyring.from_keys(f"{new},{SECRET_KEY}")
    db = app.state.runtime.db
    done = await reseal_all(db, rotated)
    assert done["notification_channels.secrets_sealed"] == 1
    await check_keys(db, Keyring.from_keys(new))  # the old key is no longer needed
    async with db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT secrets_sealed FROM notification_channels")
        row = await cur.fetchone()
    assert row is not None
    assert Keyring.from_keys(new).open(row["secrets_sealed"])["signing"] == [made["signing_secret"]]


async def test_subscription_filters_by_asset_tags_and_types(client: httpx.AsyncClient, tenant: Any) -> None:
    from tests.api.helpers import create

    h = tenant.headers("steward")
    with receiver() as hook:
        channel = await make_webhook(client, h, hook.url)
        r = await client.post(
            "/notifications/subscriptions",
            json={
                "channel_id": channel["id"],
                "event_types": ["asset.created"],
                "filter": {"tags": ["gold"], "types": ["table"]},
            },
            headers=h,
        )
        assert r.status_code == 201 and r.json()["filter"]["tags"] == ["gold"]
        editor = tenant.headers("editor")
        await create(client, editor, "pg://f/db.s.plain")
        await create(client, editor, "pg://f/db.s.gold", tags=["gold"])
        await eventually(lambda: hook.received(), timeout=60, what="the gold table")
        await notify(client, h, channel["id"], "marker")  # queued after: once it is in, the rest were decided
        await eventually(lambda: len(hook.received()) >= 2, timeout=60, what="the marker")
    names = [q.json()["data"]["qualified_name"] for q in hook.received()]
    assert names[0] == "pg://f/db.s.gold" and "pg://f/db.s.plain" not in names
