"""Webhook deliveries against a real receiver on loopback: signatures, retries, Retry-After, 410, slow
answers, refused connections, dead letters and replay, and change events turned into deliveries."""

from __future__ import annotations

from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.api.helpers import create

from .receivers import Answer, Request, closed_port, eventually, receiver


async def make_webhook(client: httpx.AsyncClient, headers: dict[str, str], url: str, name: str = "hook") -> dict:
    r = await client.post(
        "/notifications/channels", json={"name": name, "type": "webhook", "config": {"url": url}}, headers=headers
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert body["signing_secret"].startswith("whsec_")
    return body


async def notify(client: httpx.AsyncClient, headers: dict[str, str], channel_id: str, title: str = "hi") -> str:
    r = await client.post(
        "/metadata/notifications",
        json={"channel_id": channel_id, "title": title, "message": "body", "severity": "warning"},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    delivery_id: str = r.json()["delivery_id"]
    return delivery_id


async def delivery(client: httpx.AsyncClient, headers: dict[str, str], delivery_id: str) -> dict[str, Any]:
    r = await client.get(f"/notifications/deliveries/{delivery_id}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def settled(client: httpx.AsyncClient, headers: dict[str, str], delivery_id: str, state: str) -> dict:
    async def check() -> dict[str, Any] | None:
        d = await delivery(client, headers, delivery_id)
        return d if d["state"] == state else None

    result: dict[str, Any] = await eventually(check, timeout=60, what=f"delivery {state}")
    return result


def verify(secret: str, request: Request) -> Any:
    return Webhook(secret).verify(request.body, request.headers)


async def test_a_notification_arrives_signed_and_verifies(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    with receiver() as hook:
        channel = await make_webhook(client, h, hook.url + "/hook")
        delivery_id = await notify(client, h, channel["id"], "Disk full")
        done = await settled(client, h, delivery_id, "delivered")
        (request,) = hook.received("/hook")
    data = verify(channel["signing_secret"], request)
    assert data["type"] == "notification.sent" and data["data"]["changes"]["title"] == "Disk full"
    assert request.headers["webhook-id"] == done["message_id"] == data["data"]["id"]
    assert done["attempts"] == 1 and done["last_status"] == 200
    assert done["attempt_log"][0]["status"] == 200


async def test_asset_changes_become_signed_deliveries_in_order(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    with receiver() as hook:
        channel = await make_webhook(client, h, hook.url + "/hook")
        r = await client.post(
            "/notifications/subscriptions",
            json={
                "channel_id": channel["id"],
                "event_types": ["asset.*"],
                "filter": {"qualified_name_prefix": "pg://a"},
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        editor = tenant.headers("editor")
        await create(client, editor, "pg://a/db.s.one")
        await create(client, editor, "pg://other/db.s.skipped")
        await create(client, editor, "pg://a/db.s.one", description="changed")
        await eventually(lambda: len(hook.received("/hook")) >= 2, timeout=60, what="two deliveries")
        assert len(hook.received("/hook")) == 2  # the other prefix was filtered out
        bodies = [verify(channel["signing_secret"], q) for q in hook.received("/hook")]
    types = sorted(b["data"]["type"] for b in bodies)
    assert types == ["asset.created", "asset.updated"]
    for request, body in zip(hook.received("/hook"), bodies, strict=True):
        assert request.headers["webhook-id"] == body["data"]["id"]
        assert body["data"]["qualified_name"] == "pg://a/db.s.one"


async def test_a_5xx_is_retried_and_retry_after_is_honoured(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    answers = [Answer(503), Answer(429, headers={"Retry-After": "1"}), Answer(200)]
    with receiver(lambda r: answers.pop(0) if answers else Answer(200)) as hook:
        channel = await make_webhook(client, h, hook.url)
        delivery_id = await notify(client, h, channel["id"])
        done = await settled(client, h, delivery_id, "delivered")
        first, second, third = hook.received()
    assert done["attempts"] == 3
    assert [a["status"] for a in done["attempt_log"]] == [200, 429, 503]
    assert third.at - second.at >= 0.95  # Retry-After: 1, though the schedule says 0.2 s
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]


async def test_a_4xx_is_permanent_and_dead_lettered_then_replayed(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    answers = [Answer(400, body=b"bad payload " * 200)]
    with receiver(lambda r: answers.pop(0) if answers else Answer(204)) as hook:
        channel = await make_webhook(client, h, hook.url)
        delivery_id = await notify(client, h, channel["id"])
        dead = await settled(client, h, delivery_id, "dead")
        assert dead["attempts"] == 1 and dead["last_status"] == 400
        assert dead["last_response"].startswith("bad payload") and len(dead["last_response"]) <= 1001
        listed = await client.get("/notifications/deliveries", params={"state": "dead"}, headers=h)
        assert [d["id"] for d in listed.json()["items"]] == [delivery_id]
        r = await client.post("/notifications/deliveries/retry", json={"channel_id": channel["id"]}, headers=h)
        assert r.status_code == 200 and r.json() == {"replayed": 1}
        done = await settled(client, h, delivery_id, "delivered")
        assert done["attempts"] == 2 and len(hook.received()) == 2
        # A delivered one can be sent again on request, with the same webhook-id.
        r = await client.post(f"/notifications/deliveries/{delivery_id}/retry", headers=h)
        assert r.status_code == 200, r.text
        await eventually(lambda: len(hook.received()) == 3, what="the resend")
        assert len({q.headers["webhook-id"] for q in hook.received()}) == 1


async def test_410_disables_the_channel_until_put_enables_it(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    gone = [True]
    with receiver(lambda r: Answer(410) if gone[0] else Answer(200)) as hook:
        channel = await make_webhook(client, h, hook.url)
        first = await notify(client, h, channel["id"])
        await settled(client, h, first, "dead")
        got = (await client.get(f"/notifications/channels/{channel['id']}", headers=h)).json()
        assert got["enabled"] is False and "410" in got["disabled_reason"]
        second = await notify(client, h, channel["id"])
        gone[0] = False
        # A disabled channel sends nothing: a delivery to another channel, queued after, gets through first.
        other = await make_webhook(client, h, hook.url + "/other", "other")
        await settled(client, h, await notify(client, h, other["id"]), "delivered")
        assert (await delivery(client, h, second))["state"] == "pending" and len(hook.received("/")) == 1
        got["enabled"] = True
        r = await client.put(f"/notifications/channels/{channel['id']}", json=got, headers=h)
        assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["disabled_reason"] is None
        await settled(client, h, second, "delivered")


async def test_slow_answers_time_out_and_refused_connections_retry_then_dead_letter(
    client: httpx.AsyncClient, tenant: Any
) -> None:
    h = tenant.headers("steward")
    with receiver(lambda r: Answer(200, delay=2.0)) as slow:
        channel = await make_webhook(client, h, slow.url, "slow")
        delivery_id = await notify(client, h, channel["id"])
        dead = await settled(client, h, delivery_id, "dead")
    assert dead["attempts"] == 4  # the whole (compressed) schedule
    assert all("no answer within 1 s" in a["error"] for a in dead["attempt_log"])
    refused = await make_webhook(client, h, f"http://127.0.0.1:{closed_port()}/x", "refused")
    delivery_id = await notify(client, h, refused["id"])
    dead = await settled(client, h, delivery_id, "dead")
    assert dead["attempts"] == 4 and "ConnectError" in dead["last_error"]


async def test_a_receiver_down_then_up_gets_everything_once_per_webhook_id(
    client: httpx.AsyncClient, tenant: Any
) -> None:
    h = tenant.headers("steward")
    handled: dict[str, Any] = {}
    seen = [0]
    secret: list[str] = []

    def dedupe(request: Request) -> Answer:
        seen[0] += 1
        if seen[0] <= 6:
            return Answer(503)  # down for the first attempts
        data = verify(secret[0], request)  # raises on a bad signature: the test then never settles
        handled.setdefault(request.headers["webhook-id"], data)
        return Answer(200)

    with receiver(dedupe) as hook:
        channel = await make_webhook(client, h, hook.url)
        secret.append(channel["signing_secret"])
        await client.post(
            "/notifications/subscriptions", json={"channel_id": channel["id"], "event_types": ["*"]}, headers=h
        )
        ids = [await notify(client, h, channel["id"], f"n{i}") for i in range(5)]
        for i in range(5):
            await create(client, tenant.headers("editor"), f"pg://down/db.s.t{i}")
        await eventually(lambda: len(handled) == 10, timeout=60, what="ten distinct deliveries")
        for delivery_id in ids:
            await settled(client, h, delivery_id, "delivered")
    assert len(hook.received()) >= 10 + 6
    assert sorted(d["type"] for d in handled.values()) == ["asset.created"] * 5 + ["notification.sent"] * 5
