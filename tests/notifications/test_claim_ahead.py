"""Claiming ahead (lily.dispatch.dispatcher): with a lease long enough to wait and then attempt, up to
per-channel more deliveries wait claimed for a slot of their channel, yet no channel ever has more than
LILY_DELIVERY_CONCURRENCY_PER_CHANNEL attempts at once, everything arrives once, and what waited too long,
or was claimed when the dispatcher stopped, is handed back unsent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from lily import admin
from lily.config import Settings
from lily.crypto import Keyring
from lily.dispatch import manage
from lily.dispatch.dispatcher import Dispatcher
from lily.domain.notifications import ChannelIn
from lily.plugins import load_plugins
from lily.store import notifications as store
from lily.store.db import Database

from .receivers import Answer, receiver
from .test_webhooks import make_webhook, notify, settled

DELAY = 0.15


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"delivery_lease_seconds": 30.0, "delivery_timeout_seconds": 2.0, "delivery_concurrency_per_channel": 2}
    )


def most_at_once(arrivals: list[float], busy: float) -> int:
    """The most requests that arrived within one ``busy`` window (each holds its connection that long)."""
    arrivals = sorted(arrivals)
    return max(sum(1 for b in arrivals if a <= b < a + busy) for a in arrivals)


async def test_claimed_ahead_yet_never_more_than_per_channel_at_once(client: httpx.AsyncClient, tenant: Any) -> None:
    h = tenant.headers("steward")
    with receiver(lambda r: Answer(204, delay=DELAY)) as hook:
        channel = await make_webhook(client, h, hook.url)
        ids = [await notify(client, h, channel["id"], f"n{i}") for i in range(12)]
        for delivery_id in ids:
            done = await settled(client, h, delivery_id, "delivered")
            assert done["attempts"] == 1
        arrivals = [r.at for r in hook.received()]
    assert len(arrivals) == 12 and len({r.headers["webhook-id"] for r in hook.received()}) == 12
    assert most_at_once(arrivals, DELAY * 0.9) <= 2


async def test_a_claim_that_waited_too_long_is_handed_back_unsent(db: Database, settings: Settings) -> None:
    keyring = Keyring.from_settings(settings)
    channels = load_plugins(settings).channels
    await admin.create_tenant(db, "waits")
    body = ChannelIn(name="hook", type="webhook", config={"url": "http://127.0.0.1:9/never"})
    channel = await manage.create_channel(db, keyring, channels, "waits", body, actor="test", request_id=None)
    now = datetime.now(UTC)
    rows = [(channel["id"], f"m{i}", "notification.sent", {"id": f"m{i}"}, now, 0.0) for i in range(3)]
    async with db.tenant("waits") as conn:
        await store.insert_deliveries(conn, "waits", rows)
    dispatcher = Dispatcher(db, settings, channels, keyring)
    dispatcher.per_channel, dispatcher.ahead = 0, 3  # no slot free: everything claimed waits
    assert await dispatcher._claim(None, 10) == 3
    assert dispatcher.queued_count == 3 and not dispatcher.in_flight
    dispatcher.per_channel = 1  # a slot frees, but the claims waited longer than the lease allows
    dispatcher.queue_seconds = 0.0
    dispatcher._pump()
    assert not dispatcher.in_flight and dispatcher.queued_count == 0 and len(dispatcher.release) == 3
    await dispatcher._flush()
    async with db.system() as conn:
        await conn.execute("SET LOCAL ROLE lily_pipeline")
        cur = await conn.execute(
            "SELECT state, attempts, lease_owner, next_attempt_at <= now() AS due FROM deliveries"
            " WHERE tenant_id = 'waits'"
        )
        got = await cur.fetchall()
    assert got == [{"state": "pending", "attempts": 0, "lease_owner": None, "due": True}] * 3
