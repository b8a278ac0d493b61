"""Outbound dispatch benchmark: deliveries/s to a fast loopback receiver, and change→delivery latency.

    python bench/dispatch.py                         # 20,000 deliveries over 8 channels; 10 s of changes at 200/s
    python bench/dispatch.py --deliveries 50000 --channels 16 --rate 500 --seconds 20

It creates a fresh database on the server named by ``--admin-url`` (a superuser) and runs a webhook
receiver in its own process (uvicorn, answering 204 at once, checking nothing). Then:

1. throughput: ``--deliveries`` notifications queued at once over ``--channels`` webhook channels (in
   two tenants), drained by one in-process dispatcher; prints deliveries/s from the first claim to the
   last delivery recorded.
2. latency: pipeline workers and the dispatcher run; asset changes are appended to the event log at
   ``--rate`` per second for ``--seconds``; each becomes a change event, a delivery and a signed request.
   The receiver measures now - the change event's ``occurred_at`` (stamped just before the apply commits)
   and the script prints p50/p99 of commit→receiver.

Figures are printed, never asserted. The goal (issue 9): ≥ 1,000 deliveries/s and p99 < 1 s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import figures  # bench/figures.py, beside this script
import httpx
import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lily import admin
from lily.config import Settings
from lily.crypto import Keyring, generate_key
from lily.dispatch import manage
from lily.dispatch.channels.webhook import WebhookChannel
from lily.dispatch.dispatcher import Dispatcher
from lily.domain.events import ASSET_UPSERT, NewEvent
from lily.domain.notifications import ChannelIn, SubscriptionIn
from lily.pipeline.runner import start_workers
from lily.plugins import load_plugins
from lily.store import log as store_log
from lily.store import notifications as store
from lily.store.db import Database
from lily.store.migrate import migrate


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def receiver(port: int) -> None:
    """A webhook receiver that answers 204 at once and keeps count (and latency) until asked for them."""
    import uvicorn

    latencies: list[float] = []
    count = [0]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/stats":
            data = orjson.dumps({"count": count[0], "latencies": latencies})
            latencies.clear()
            count[0] = 0
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": data})
            return
        count[0] += 1
        if scope["path"] == "/changes":
            occurred = orjson.loads(body)["data"]["occurred_at"]
            latencies.append(time.time() - datetime.fromisoformat(occurred).timestamp())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="httptools")


def settings_for(url: str, args: argparse.Namespace, home: str) -> Settings:
    return Settings(
        database_url=url,
        home=home,
        partitions=args.partitions,
        hooks="",
        secret_key=generate_key(),
        allow_private_targets=True,
        delivery_concurrency=args.concurrency,
        delivery_concurrency_per_channel=args.per_channel,
    )


async def stats(http: httpx.AsyncClient, base: str) -> dict[str, Any]:
    # One client for the whole run: building one loads the CA bundle (~50 ms of CPU on this machine),
    # which, every 0.2 s, stalled the event loop the dispatcher under test shares.
    body: dict[str, Any] = (await http.get(f"{base}/stats")).json()
    return body


async def throughput(
    args: argparse.Namespace, db: Database, settings: Settings, base: str, http: httpx.AsyncClient
) -> None:
    keyring = Keyring.from_settings(settings)
    channels = load_plugins(settings).channels
    tenants = ["bench-a", "bench-b"]
    made: list[tuple[str, Any]] = []
    for i in range(args.channels):
        tenant = tenants[i % 2]
        body = ChannelIn(name=f"hook{i}", type="webhook", config={"url": f"{base}/hook/{i}"})
        row = await manage.create_channel(db, keyring, channels, tenant, body, actor="bench", request_id=None)
        made.append((tenant, row["id"]))
    now = datetime.now(UTC)
    per_channel = args.deliveries // args.channels
    for tenant, channel_id in made:
        rows = []
        for _ in range(per_channel):
            message_id = str(uuid.uuid4())
            payload = {"id": message_id, "type": "notification.sent", "changes": {"title": "bench"}}
            rows.append((channel_id, message_id, "notification.sent", payload, now, 0.0))
        for i in range(0, len(rows), 5000):
            async with db.tenant(tenant) as conn:
                await store.insert_deliveries(conn, tenant, rows[i : i + 5000])
    total = per_channel * len(made)
    await stats(http, base)  # reset
    dispatcher = Dispatcher(db, settings, {"webhook": WebhookChannel()}, keyring)
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(dispatcher.run(stop))
    while True:
        async with db.system() as conn:
            await conn.execute("SET LOCAL ROLE lily_pipeline")
            cur = await conn.execute("SELECT count(*) AS n FROM deliveries WHERE state = 'pending'")
            row = await cur.fetchone()
        if row is not None and row["n"] == 0:
            break
        await asyncio.sleep(0.05)  # polling the benchmark's own end condition
    elapsed = time.monotonic() - started
    stop.set()
    await task
    got = await stats(http, base)
    print(
        f"throughput: {total:,} deliveries over {len(made)} channels (2 tenants), one dispatcher"
        f" (concurrency {args.concurrency}, {args.per_channel} per channel): {elapsed:.2f}s ="
        f" {total / elapsed:,.0f} deliveries/s; the receiver got {got['count']:,}"
    )


async def latency(
    args: argparse.Namespace, db: Database, settings: Settings, base: str, http: httpx.AsyncClient
) -> None:
    keyring = Keyring.from_settings(settings)
    plugins = load_plugins(settings)
    tenant = "bench-l"
    await admin.create_tenant(db, tenant)
    channel = await manage.create_channel(
        db,
        keyring,
        plugins.channels,
        tenant,
        ChannelIn(name="changes", type="webhook", config={"url": f"{base}/changes"}),
        actor="bench",
        request_id=None,
    )
    await manage.create_subscription(
        db, tenant, SubscriptionIn(channel_id=channel["id"], event_types=["asset.*"]), actor="bench", request_id=None
    )
    stop = asyncio.Event()
    tasks = start_workers(db, settings, stop, count=1, plugins=plugins)
    tasks.append(asyncio.create_task(Dispatcher(db, settings, plugins.channels, keyring).run(stop)))
    await stats(http, base)  # reset
    sent = 0
    started = time.monotonic()
    tick = 0.05
    while time.monotonic() - started < args.seconds:
        due = int((time.monotonic() - started) * args.rate) - sent
        if due > 0:
            events = [
                NewEvent(
                    tenant,
                    f"pg://bench/s.t{sent + i}",
                    ASSET_UPSERT,
                    {"qualified_name": f"pg://bench/s.t{sent + i}", "type": "table"},
                    "bench",
                )
                for i in range(due)
            ]
            async with db.tenant(tenant) as conn:
                await store_log.append(conn, events, settings.partitions)
            sent += due
        await asyncio.sleep(tick)  # pacing the load generator
    latencies: list[float] = []
    deadline = time.monotonic() + 60
    while len(latencies) < sent and time.monotonic() < deadline:
        latencies.extend((await stats(http, base))["latencies"])
        await asyncio.sleep(0.2)  # collecting the receiver's counts
    stop.set()
    for task in tasks:
        await task
    if not latencies:
        print("latency: nothing arrived")
        return
    latencies.sort()
    p50, p99 = figures.percentile(latencies, 50), figures.percentile(latencies, 99)
    print(
        f"latency: {sent:,} asset changes at {args.rate}/s for {args.seconds}s, {len(latencies):,} delivered;"
        f" commit→receiver p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )


async def run(args: argparse.Namespace, url: str, base: str) -> None:
    home = f"/tmp/lily-bench-dispatch-{os.getpid()}"
    settings = settings_for(url, args, home)
    db = Database(url, min_size=2, max_size=8, tenant_share=1.0)
    await db.open()
    try:
        async with httpx.AsyncClient() as http:
            for tenant in ("bench-a", "bench-b"):
                await admin.create_tenant(db, tenant)
            if args.deliveries:
                await throughput(args, db, settings, base, http)
            if args.seconds:
                await latency(args, db, settings, base, http)
    finally:
        await db.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--admin-url", default=os.environ.get("LILY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument("--deliveries", type=int, default=20_000)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--per-channel", type=int, default=8)
    p.add_argument("--rate", type=int, default=200, help="asset changes per second in the latency phase")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--partitions", type=int, default=8)
    args = p.parse_args()
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(target=receiver, args=(port,), daemon=True)
    proc.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/stats")
            break
        except httpx.TransportError:
            time.sleep(0.1)  # waiting for the receiver to listen
    name = f"lily_bench_dispatch_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = with_dbname(args.admin_url, name)
    try:
        migrate(url, partitions=args.partitions)
        asyncio.run(run(args, url, base))
    finally:
        proc.terminate()
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
