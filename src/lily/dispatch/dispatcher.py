"""The dispatcher: change events become deliveries, deliveries are sent, outcomes recorded.

Any number of dispatchers (``lily dispatcher``, and one inside ``lily serve``) share the work through
PostgreSQL alone: a tenant's fan-out is one dispatcher's at a time (its position row, SKIP LOCKED), and
each due delivery is claimed by one dispatcher with a lease (:func:`lily.store.notifications.claim`).
A dispatcher killed mid-send leaves its deliveries leased; when the lease ends they come due again and
are sent again with the same ``webhook-id``: at least once, never lost.

Three loops run side by side: fan-out (change events → deliveries), sending (claim what is due, one task
per delivery, at most ``LILY_DELIVERY_CONCURRENCY`` at once, at most ``…_PER_CHANNEL`` per channel and
half of all per tenant, so one tenant's slow receiver never holds the others up), and recording
(outcomes of finished attempts written in batches: deliveries per second are not transactions per second).
Sending claims ahead: up to ``…_PER_CHANNEL`` more of a channel wait claimed (leased) and start the moment a
slot of their channel frees, rather than a claim's round trip later — as long as the lease leaves room to
wait and then attempt; what waited too long, or waits when the dispatcher stops or its channel is
disabled, is handed back unsent (:func:`lily.store.notifications.release`).
Idle loops sleep until PostgreSQL notifies them (:mod:`lily.dispatch.wakeup`: change events committed,
deliveries made due), a slot frees, a retry comes due, or ``LILY_DELIVERY_POLL_SECONDS`` pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import orjson
from pydantic import BaseModel

from lily.config import Settings
from lily.crypto import Keyring, SecretKeyError
from lily.dispatch import fanout
from lily.dispatch.channels.http import truncated
from lily.dispatch.transport import delivery_client
from lily.dispatch.wakeup import Wakeups, wait
from lily.domain.errors import Invalid
from lily.domain.notifications import next_step, parse_schedule
from lily.netguard import quiet_http_logs
from lily.plugins.config import plugin_config
from lily.plugins.protocols import Channel, DeliveryContext, DeliveryResult
from lily.store import notifications as store
from lily.store.db import Conn, Database, as_pipeline

log = logging.getLogger(__name__)

CLAIM_BATCH = 200
# Channels whose opened secrets and validated config are kept, keyed by everything they derive from (the
# sealed secrets, the config, whether the previous secret still signs): a rotation or an edit is a new
# key. Opening (Fernet) and validating (pydantic) cost ~70 µs of CPU per delivery otherwise.
PREPARED_MAX = 1024


class Dispatcher:
    def __init__(self, db: Database, settings: Settings, channels: Mapping[str, Channel], keyring: Keyring) -> None:
        self.db = db
        self.settings = settings
        self.channels = channels
        self.keyring = keyring
        self.schedule = parse_schedule(settings.delivery_retry_schedule)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.limit = settings.delivery_concurrency
        self.per_channel = settings.delivery_concurrency_per_channel
        self.per_tenant = max(1, self.limit // 2)
        self.in_flight: dict[UUID, asyncio.Task[None]] = {}
        # Claimed ahead: up to per_channel more of each channel wait here, leased, to start the moment a slot
        # of their channel frees (not a claim's round trip later). Only while the lease leaves room for
        # waiting and then a whole attempt; one that waited longer is released, never sent late.
        self.queue_seconds = settings.delivery_lease_seconds - 2 * settings.delivery_timeout_seconds - 1
        self.ahead = self.per_channel if self.queue_seconds > 0 else 0
        self.capacity = self.limit * 2 if self.ahead else self.limit  # in flight and waiting
        self.queued: dict[UUID, deque[tuple[float, dict[str, Any]]]] = {}
        self.queued_count = 0
        self.release: list[dict[str, Any]] = []
        self._http: Any = None
        self.by_channel: Counter[UUID] = Counter()
        self.by_tenant: Counter[str] = Counter()
        self.outcomes: list[dict[str, Any]] = []
        self.disable: list[tuple[str, UUID, str]] = []
        self.poll = settings.delivery_poll_seconds
        self._prepared: dict[tuple[Any, ...], tuple[BaseModel, tuple[str, ...]]] = {}
        self._recorded = asyncio.Event()
        self._outcome_ready = asyncio.Event()
        self._changes = asyncio.Event()  # fan-out may have work
        self._sendable = asyncio.Event()  # sending may have work: deliveries made due, a slot freed
        self.wakeups = Wakeups(db.url, changes=self._changes, deliveries=self._sendable)

    async def run(self, stop: asyncio.Event) -> None:
        http = self._http = self.http_client()
        log.info("dispatcher %s started", self.name)
        loops = [
            asyncio.create_task(self._fan_out_loop(stop), name="dispatch-fanout"),
            asyncio.create_task(self._send_loop(stop, http), name="dispatch-send"),
            asyncio.create_task(self.wakeups.run(), name="dispatch-listen"),
            asyncio.create_task(self._record_loop(stop), name="dispatch-record"),
        ]
        try:
            await stop.wait()
        finally:
            for task in loops[:3]:
                task.cancel()
            for task in loops[:3]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # Attempts in flight finish (each is bounded by its timeout), then their outcomes are recorded;
            # any not recorded come due again when their lease ends.
            for waiting in self.queued.values():  # handed back at once, not at their lease's end
                self.release.extend(row for _, row in waiting)
            self.queued.clear()
            self.queued_count = 0
            if self.in_flight:
                await asyncio.wait(list(self.in_flight.values()), timeout=self.settings.delivery_timeout_seconds + 2)
            loops[3].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loops[3]
            with contextlib.suppress(Exception):
                await self._flush()
            await http.aclose()
            log.info("dispatcher %s stopped", self.name)

    def http_client(self) -> httpx.AsyncClient:
        """Every channel's requests go through this client: connections kept alive per origin, the address
        guard on each new one (:mod:`lily.dispatch.transport`). An origin may have as many connections as
        the dispatcher has attempts in flight, so many channels on one host (every Slack workspace) never
        wait on each other's slow answers: the per-channel bound is the dispatcher's."""
        quiet_http_logs()
        return delivery_client(
            allow_private=self.settings.allow_private_targets,
            max_per_origin=self.limit,
            timeout=self.settings.delivery_timeout_seconds,
        )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Conn]:
        """A transaction as the pipeline role, its BEGIN and role sent with its first statement and its
        COMMIT after the last without waiting (psycopg's pipeline mode): two round trips, not four."""
        async with self.db.connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    await as_pipeline(conn)
                    yield conn
                    await conn.execute("COMMIT")
            except BaseException:
                if not conn.closed:
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise

    # -- fan-out ---------------------------------------------------------------------------------------

    async def _fan_out_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self._fan_out_once()
            except Exception:
                log.exception("dispatcher fan-out failed; retrying")
                busy = False
                await asyncio.sleep(1)
            if busy:
                self._sendable.set()  # this dispatcher need not wait for its own notification
            else:
                await wait(self._changes, stop, self.poll)

    async def _fan_out_once(self) -> bool:
        async with self.db.system() as conn:
            await as_pipeline(conn)
            tenants = await store.tenants_with_changes(conn)
        done = 0
        for tenant_id in tenants:
            done += await fanout.fan_out(self.db, tenant_id, self.schedule[0])
        return done > 0

    # -- sending ---------------------------------------------------------------------------------------

    async def _send_loop(self, stop: asyncio.Event, http: Any) -> None:
        while not stop.is_set():
            free = self.capacity - len(self.in_flight) - self.queued_count
            claimed = 0
            if free > 0:
                try:
                    claimed = await self._claim(http, min(free, CLAIM_BATCH))
                except Exception:
                    log.exception("claiming deliveries failed; retrying")
                    await asyncio.sleep(1)
            if claimed == 0 or len(self.in_flight) + self.queued_count >= self.capacity:
                # Until a notification, a freed slot or a retry coming due says there may be more.
                await wait(self._sendable, stop, self.poll)

    async def _claim(self, http: Any, count: int) -> int:
        busy_tenants = [t for t, n in self.by_tenant.items() if n >= self.per_tenant]
        taken = Counter(self.by_channel)
        for channel_id, waiting in self.queued.items():
            taken[channel_id] += len(waiting)
        async with self._transaction() as conn:
            rows = await store.claim(
                conn,
                owner=self.name,
                limit=count,
                per_channel=self.per_channel + self.ahead,
                in_flight=dict(taken),
                busy_tenants=busy_tenants,
                lease_seconds=self.settings.delivery_lease_seconds,
            )
        now = time.monotonic()
        for row in rows:
            self.queued.setdefault(row["channel_id"], deque()).append((now, row))
        self.queued_count += len(rows)
        self._pump()
        return len(rows)

    def _pump(self) -> None:
        """Start what waits, channel by channel in random order, while slots allow."""
        channels = list(self.queued)
        random.shuffle(channels)
        now = time.monotonic()
        for channel_id in channels:
            waiting = self.queued[channel_id]
            while waiting and self.by_channel[channel_id] < self.per_channel and len(self.in_flight) < self.limit:
                claimed_at, row = waiting[0]
                if self.ahead and now - claimed_at > self.queue_seconds:
                    self.release.append(row)  # its lease may end mid-attempt: back to the queue table
                    self._outcome_ready.set()
                elif self.ahead and self.by_tenant[row["tenant_id"]] >= self.per_tenant:
                    break
                else:
                    self._start(self._http, row)
                waiting.popleft()
                self.queued_count -= 1
            if not waiting:
                del self.queued[channel_id]

    def _start(self, http: Any, row: dict[str, Any]) -> None:
        delivery_id: UUID = row["delivery_id"]
        self.by_channel[row["channel_id"]] += 1
        self.by_tenant[row["tenant_id"]] += 1
        task = asyncio.create_task(self._send(http, row), name=f"deliver-{delivery_id}")
        self.in_flight[delivery_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self.in_flight.pop(delivery_id, None)
            for counter, key in ((self.by_channel, row["channel_id"]), (self.by_tenant, row["tenant_id"])):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]
            if self.queued:
                self._pump()
            self._sendable.set()

        task.add_done_callback(done)

    async def _send(self, http: Any, row: dict[str, Any]) -> None:
        started_at = datetime.now(UTC)
        started = time.monotonic()
        result = await self._attempt(http, row)
        tries = row["attempts"] - row["round_start"]
        state, delay = next_step(
            self.schedule, tries, ok=result.ok, permanent=result.permanent, retry_after=result.retry_after_seconds
        )
        if state == "pending" and delay < self.poll:
            # A retry due before the next poll: look again then (the record is written well before).
            asyncio.get_running_loop().call_later(delay, self._sendable.set)
        if result.disable:
            # What waits for the channel goes back unsent: it is sent when the channel is enabled again.
            self.release.extend(r for _, r in self.queued.pop(row["channel_id"], ()))
            self.queued_count = sum(len(w) for w in self.queued.values())
            self.disable.append((row["tenant_id"], row["channel_id"], result.error or "the receiver answered 410"))
        self.outcomes.append(
            {
                "tenant_id": row["tenant_id"],
                "delivery_id": row["delivery_id"],
                "attempt": row["attempts"],
                "state": state,
                "delay": delay,
                "status": result.status,
                "error": truncated(result.error, 500) if result.error else None,
                "response": truncated(result.response) if result.response else None,
                "started_at": started_at,
                "duration_ms": int((time.monotonic() - started) * 1000),
            }
        )
        self._outcome_ready.set()

    async def _attempt(self, http: Any, row: dict[str, Any]) -> DeliveryResult:
        channel = self.channels.get(row["channel_type"])
        if channel is None:
            return DeliveryResult(ok=False, error=f"no channel plugin {row['channel_type']!r} is installed")
        key = (
            row["channel_id"],
            row["channel_type"],
            row["secrets_sealed"],
            orjson.dumps(row["channel_config"], option=orjson.OPT_SORT_KEYS),
            bool(row["previous_secret_signs"]),
        )
        prepared = self._prepared.get(key)
        if prepared is None:
            try:
                sealed = self.keyring.open(row["secrets_sealed"]) if row["secrets_sealed"] else {}
            except SecretKeyError as exc:
                return DeliveryResult(ok=False, error=str(exc))
            raw = {**row["channel_config"], **(sealed.get("config") or {})}
            try:
                config = plugin_config(channel, raw)
            except Invalid as exc:
                return DeliveryResult(ok=False, error=f"the channel's config is invalid: {exc.detail}", permanent=True)
            signing = list(sealed.get("signing") or [])
            if not row["previous_secret_signs"]:
                signing = signing[:1]
            if len(self._prepared) >= PREPARED_MAX:
                self._prepared.clear()
            prepared = self._prepared[key] = (config, tuple(signing))
        config, signing_secrets = prepared
        timeout = self.settings.delivery_timeout_seconds
        ctx = DeliveryContext(
            http=http,
            timeout=timeout,
            message_id=row["message_id"],
            attempt=row["attempts"],
            tenant_id=row["tenant_id"],
            channel_id=str(row["channel_id"]),
            signing_secrets=signing_secrets,
        )
        try:
            # The channel bounds each request; this bounds the attempt as a whole (several requests).
            return await asyncio.wait_for(channel.deliver(ctx, config, row["payload"]), timeout * 2)
        except TimeoutError:
            return DeliveryResult(ok=False, error=f"the attempt took longer than {timeout * 2:g} s")
        except Exception as exc:
            # A channel must not raise; if one does, its message might hold anything: log the type only.
            log.warning("channel %s raised %s", row["channel_type"], type(exc).__name__)
            return DeliveryResult(ok=False, error=f"the channel failed ({type(exc).__name__})")

    # -- recording -------------------------------------------------------------------------------------

    async def _record_loop(self, stop: asyncio.Event) -> None:
        while True:
            self._outcome_ready.clear()
            if not self.outcomes and not self.disable and not self.release:
                await self._outcome_ready.wait()
            try:
                await self._flush()
            except Exception:
                log.exception("recording delivery outcomes failed; retrying")
                await asyncio.sleep(1)
            self._recorded.set()

    async def _flush(self) -> None:
        outcomes, self.outcomes = self.outcomes, []
        disable, self.disable = self.disable, []
        release, self.release = self.release, []
        if not outcomes and not disable and not release:
            return
        try:
            async with self._transaction() as conn:
                for tenant_id, channel_id, reason in disable:
                    await store.disable_channel(conn, tenant_id, channel_id, reason)
                await store.record(conn, self.name, outcomes)
                await store.release(conn, self.name, release)
        except BaseException:
            self.outcomes[:0] = outcomes  # kept for the next try (the lease covers them meanwhile)
            self.disable[:0] = disable
            self.release[:0] = release
            raise
