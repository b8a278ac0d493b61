"""Slack and Jira channels against real servers on loopback that answer like them."""

from __future__ import annotations

from typing import Any

import httpx

from .receivers import Answer, FakeJira, Request, eventually, receiver
from .test_webhooks import notify, settled


async def channel(client: httpx.AsyncClient, h: dict[str, str], type_: str, config: dict[str, Any]) -> dict:
    r = await client.post(
        "/notifications/channels", json={"name": f"{type_}-1", "type": type_, "config": config}, headers=h
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert body["signing_secret"] is None
    return body


async def test_slack_incoming_webhook_gets_block_kit_and_429_is_retried_after(
    client: httpx.AsyncClient, tenant: Any
) -> None:
    h = tenant.headers("steward")
    answers = [Answer(429, b"rate_limited", {"Retry-After": "1", "Content-Type": "text/plain"})]
    with receiver(lambda r: answers.pop(0) if answers else Answer(200, b"ok", {"Content-Type": "text/plain"})) as slack:
        made = await channel(client, h, "slack", {"webhook_url": slack.url + "/services/T0/B0/secretpart"})
        assert made["config"]["webhook_url"] is None  # write-only
        delivery_id = await notify(client, h, made["id"], "Quality failed")
        done = await settled(client, h, delivery_id, "delivered")
        first, second = slack.received("/services/T0/B0/secretpart")
    assert second.at - first.at >= 0.95 and done["attempts"] == 2
    message = second.json()
    assert message["text"].startswith("[warning] Quality failed")
    assert message["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": "Quality failed"}}


async def test_slack_chat_post_message_with_a_token_and_its_errors(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")

    def api(request: Request) -> Answer:
        if request.headers.get("authorization") != "Bearer xoxb-test-token":
            return Answer(200, {"ok": False, "error": "invalid_auth"})
        if request.json()["channel"] == "#archived":
            return Answer(200, {"ok": False, "error": "is_archived"})
        return Answer(200, {"ok": True, "ts": "1.0"})

    with receiver(api) as slack:
        made = await channel(
            client, h, "slack", {"token": "xoxb-test-token", "channel": "#data", "base_url": slack.url + "/api"}
        )
        assert made["config"]["token"] is None and made["config"]["channel"] == "#data"
        ok = await settled(client, h, await notify(client, h, made["id"]), "delivered")
        assert ok["last_status"] == 200
        (request,) = slack.received("/api/chat.postMessage")
        assert request.json()["channel"] == "#data"
        # Move it to an archived channel, keeping the token without sending it again.
        made["config"] = {"channel": "#archived", "base_url": slack.url + "/api"}
        r = await client.put(f"/notifications/channels/{made['id']}", json=made, headers=h)
        assert r.status_code == 200, r.text
        dead = await settled(client, h, await notify(client, h, made["id"]), "dead")
    assert dead["attempts"] == 1 and dead["last_error"] == "Slack error: is_archived"


async def test_slack_config_needs_a_webhook_url_or_token_and_channel(client: httpx.AsyncClient, tenant: Any) -> None:
    r = await client.post(
        "/notifications/channels",
        json={"name": "s", "type": "slack", "config": {"token": "xoxb-1"}},
        headers=tenant.headers("steward"),
    )
    assert r.status_code == 422 and "webhook_url, or token and channel" in r.text
    assert "xoxb-1" not in r.text


async def test_jira_opens_one_issue_per_cause_comments_repeats_and_resolves_on_recovery(
    client: httpx.AsyncClient, tenant: Any, app: Any
) -> None:
    h = tenant.headers("steward")
    jira = FakeJira()
    with receiver(jira) as server:
        made = await channel(
            client,
            h,
            "jira",
            {
                "base_url": server.url,
                "email": "bot@example.com",
                "api_token": "jira-token-123",
                "project_key": "LILY",
            },
        )
        # Drive the channel directly with change events (the dispatcher hands it exactly these).
        from lily.dispatch.channels.jira import JiraChannel
        from lily.netguard import guarded_client
        from lily.plugins.config import plugin_config
        from lily.plugins.protocols import DeliveryContext

        plugin = JiraChannel()
        config = plugin_config(
            plugin,
            {
                "base_url": server.url,
                "email": "bot@example.com",
                "api_token": "jira-token-123",
                "project_key": "LILY",
            },
        )
        event = {
            "id": "e1",
            "type": "classification.added",
            "tenant_id": tenant.tenant_id,
            "asset_id": "00000000-0000-0000-0000-000000000001",
            "qualified_name": "pg://h/db.s.users",
            "changes": {"classification": "PII.Email", "column": "email"},
            "actor": "user:ann",
            "occurred_at": "2026-12-05T00:00:00+00:00",
        }
        async with guarded_client(allow_private=True, timeout=2) as http:
            ctx = DeliveryContext(http=http, timeout=2, message_id="e1", attempt=1, tenant_id="t", channel_id="c")
            assert (await plugin.deliver(ctx, config, event)).ok
            assert (await plugin.deliver(ctx, config, {**event, "id": "e2"})).ok  # a repeat
            other_cause = {**event, "id": "e3", "changes": {"classification": "PII.Phone"}}
            assert (await plugin.deliver(ctx, config, other_cause)).ok
            assert sorted(jira.issues) == ["LILY-1", "LILY-2"] and len(jira.comments["LILY-1"]) == 1
            created = jira.issues["LILY-1"]["fields"]
            assert created["description"]["type"] == "doc" and "PII.Email" in created["summary"]
            recovered = {**event, "id": "e4", "type": "classification.removed"}
            assert (await plugin.deliver(ctx, config, recovered)).ok
            assert jira.issues["LILY-1"]["status"] == "Done" and len(jira.comments["LILY-1"]) == 2
            assert jira.issues["LILY-2"]["status"] == "To Do"
            # After the recovery the cause opens a new issue.
            assert (await plugin.deliver(ctx, config, {**event, "id": "e5"})).ok
            assert "LILY-3" in jira.issues
            jira.fail_next.append(Answer(503, {"errorMessages": ["down"]}, {"Retry-After": "7"}))
            failed = await plugin.deliver(ctx, config, {**event, "id": "e6"})
            assert not failed.ok and not failed.permanent and failed.retry_after_seconds == 7
        # Through the dispatcher: a notification opens an issue; with basic auth from the sealed token.
        delivery_id = await notify(client, h, made["id"], "Freshness")
        await settled(client, h, delivery_id, "delivered")
        await eventually(lambda: any("Freshness" in i["fields"]["summary"] for i in jira.issues.values()))
        auth = server.received("/rest/api/3/issue")[-1].headers["authorization"]
    import base64

    assert base64.b64decode(auth.split()[1]).decode() == "bot@example.com:jira-token-123"
