"""Real ``lily dispatcher`` processes: one killed with SIGKILL mid-delivery loses nothing (at least once,
the same webhook-id), two share the work, and one without the database's key refuses to start."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from lily.api.app import create_app
from lily.config import Settings
from lily.crypto import generate_key
from tests.conftest import TEST_PARTITIONS
from tests.test_cli import lily_command

from .conftest import SECRET_KEY
from .receivers import Answer, Request, eventually, receiver
from .test_webhooks import make_webhook, notify

COUNT = 20


@pytest.fixture
async def app(settings: Settings, database_url: str) -> AsyncIterator[Any]:
    """The API only: every delivery here is sent by the dispatcher processes."""
    application = create_app(settings, database_url, run_workers=True, run_dispatcher=False)
    async with application.router.lifespan_context(application):
        yield application


def spawn(database_url: str, home: Path, log: Path, key: str = SECRET_KEY) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LILY_")}
    env.update(
        LILY_DATABASE_URL=database_url,
        LILY_HOME=str(home),
        LILY_SECRET_KEY=key,
        LILY_ALLOW_PRIVATE_TARGETS="true",
        LILY_DELIVERY_LEASE_SECONDS="2",
        LILY_DELIVERY_TIMEOUT_SECONDS="10",
        LILY_DELIVERY_RETRY_SCHEDULE="0,0.2,0.2,0.2,0.2",
        LILY_LOG_LEVEL="DEBUG",
        LILY_PARTITIONS=str(TEST_PARTITIONS),
    )
    return subprocess.Popen(
        [*lily_command(), "dispatcher"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
    )


async def states(app: Any, tenant_id: str) -> Counter[str]:
    async with app.state.runtime.db.tenant(tenant_id) as conn:
        cur = await conn.execute("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
        return Counter({r["state"]: r["n"] for r in await cur.fetchall()})


async def test_kill_9_mid_delivery_loses_nothing(
    client: httpx.AsyncClient, tenant: Any, app: Any, database_url: str, tmp_path: Path
) -> None:
    h = tenant.headers("steward")
    slow = [True]
    secret: list[str] = []

    def respond(request: Request) -> Answer:
        Webhook(secret[0]).verify(request.body, request.headers)
        return Answer(200, delay=30.0 if slow[0] else 0.0)  # slow: the first dispatcher dies holding them

    with receiver(respond) as hook:
        channel = await make_webhook(client, h, hook.url)
        secret.append(channel["signing_secret"])
        ids = [await notify(client, h, channel["id"], f"n{i}") for i in range(COUNT)]
        first = spawn(database_url, tmp_path, tmp_path / "first.log")
        try:
            await eventually(lambda: len(hook.received()) >= 3, timeout=60, what="deliveries in flight")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        in_flight = {r.headers["webhook-id"] for r in hook.received()}
        assert (await states(app, tenant.tenant_id))["delivered"] == 0
        slow[0] = False
        second = spawn(database_url, tmp_path, tmp_path / "second.log")
        third = spawn(database_url, tmp_path, tmp_path / "third.log")
        try:

            async def all_delivered() -> bool:
                return (await states(app, tenant.tenant_id))["delivered"] == COUNT

            await eventually(all_delivered, timeout=90, what="every delivery")
        finally:
            for proc in (second, third):
                proc.send_signal(signal.SIGTERM)
            for proc in (second, third):
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        received = Counter(r.headers["webhook-id"] for r in hook.received())
    assert len(received) == COUNT == len(ids)
    # The ones the killed dispatcher held were sent again, with the same webhook-id.
    assert all(received[i] >= 2 for i in in_flight)
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in ("first", "second", "third"))
    assert "dispatcher" in logs and secret[0] not in logs and SECRET_KEY not in logs


async def test_a_dispatcher_without_the_key_refuses_to_start(
    client: httpx.AsyncClient, tenant: Any, database_url: str, tmp_path: Path
) -> None:
    await make_webhook(client, tenant.headers("steward"), "https://hooks.example.com/x")
    proc = spawn(database_url, tmp_path, tmp_path / "nokey.log", key=generate_key())
    assert proc.wait(60) == 1
    output = (tmp_path / "nokey.log").read_text()
    assert "cannot start: the database holds secrets this process cannot decrypt" in output
    assert "notification_channels.secrets_sealed" in output and "Traceback" not in output
