"""An idle dispatcher is woken by PostgreSQL notifications, not by its poll: with the poll set to five
minutes, a change event and a notification still arrive within seconds, on kept-alive connections."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from lily.config import Settings
from tests.api.helpers import create

from .receivers import eventually, receiver
from .test_webhooks import make_webhook, notify, settled

POLL_SECONDS = 300.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"delivery_poll_seconds": POLL_SECONDS})


async def test_deliveries_arrive_on_notify_well_before_the_poll(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    with receiver() as hook:
        channel = await make_webhook(client, h, hook.url + "/hook")
        r = await client.post(
            "/notifications/subscriptions", json={"channel_id": channel["id"], "event_types": ["asset.*"]}, headers=h
        )
        assert r.status_code == 201, r.text
        started = time.monotonic()
        # A change event: its commit notifies lily_changes (fan-out), fan-out's insert lily_deliveries.
        await create(client, tenant.headers("editor"), "pg://wake/db.s.t")
        await eventually(lambda: hook.received("/hook"), timeout=30, what="the change's delivery")
        # A notification: its insert notifies lily_deliveries.
        await settled(client, h, await notify(client, h, channel["id"]), "delivered")
        for i in range(5):
            await settled(client, h, await notify(client, h, channel["id"], f"n{i}"), "delivered")
        elapsed = time.monotonic() - started
        assert len(hook.received("/hook")) == 7
        assert hook.connections < 7  # sent on kept-alive connections
    assert elapsed < POLL_SECONDS / 5
