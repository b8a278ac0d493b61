"""The long-lived CDC consumers: one task per ``postgres-cdc`` connector, in one process at a time.

``cdc_consumers`` (a ``lily.jobs`` plugin, run every 5 s by ``lily scheduler`` / ``lily serve``'s
scheduler leader) takes the free lease of each enabled ``postgres-cdc`` instance that has a slot and
starts a :class:`Consumer` for it; an instance without a slot (new, or fallen back) gets a crawl run
queued instead, which creates the slot (:mod:`.plugin`). The consumer renews the lease while it
streams; when its process dies the lease lapses and the next leader's job takes it over.

Each pass a consumer peeks the slot (:func:`.source.read`), re-reads the catalog of every table the new
DDL touched (with the crawler's queries and document builder), and appends the resulting
``asset.upsert`` / ``lineage.*`` / ``asset.delete`` events **together with its new position** in one
transaction of Lily's database; only then does it advance the slot. After a crash between the two, the
slot hands the same transactions out again and the saved position skips them: nothing is missed,
nothing applied twice.

Guards for the source's disk: a slot more than ``max_lag_bytes`` behind, or a consumer that has not
read for ``max_down_seconds``, drops the slot and falls back to a crawl. Deleting the connector drops its
slot (the consumer notices the row is gone and still has the config in hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from pydantic import ValidationError

from lily.config import Settings
from lily.connectors.postgres_cdc import catalog, source
from lily.connectors.postgres_cdc.decoding import Transaction, affected
from lily.connectors.postgres_cdc.plugin import CdcConfig, clear_slot_state, connect, namespace_of, with_health
from lily.crypto import Keyring
from lily.domain import connectors as rules
from lily.domain.assets import asset_id_for
from lily.domain.events import ASSET_DELETE, ASSET_UPSERT, LINEAGE_DELETE, LINEAGE_UPSERT, NewEvent
from lily.plugins.protocols import JobContext, Observed
from lily.scheduler.connectors import fingerprint, scrub
from lily.scheduler.leader import node_name
from lily.scheduler.targets import TargetGuard
from lily.store import cdc as store_cdc
from lily.store import connectors as store
from lily.store import log as store_log
from lily.store.db import Database, as_pipeline

log = logging.getLogger(__name__)

KIND = "postgres-cdc"
PEEK_LIMIT = 2000  # pgoutput messages per peek (a transaction is never split)
HEARTBEAT_SECONDS = 5.0  # how often an idle consumer saves its position, lag and liveness
LOG_TRIM_SECONDS = 86_400
_NO_LINEAGE = "-"


class CdcConsumers:
    """Starts a consumer for each ``postgres-cdc`` instance this process can lease (see the module doc)."""

    name = "cdc_consumers"
    schedule = "every 5s"

    def __init__(self) -> None:
        self.node = f"{node_name()}/cdc"
        self.running: dict[tuple[str, UUID], asyncio.Task[None]] = {}
        self._keyring: Keyring | None = None

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        return await self.start(ctx.db, ctx.settings)

    async def start(self, db: Database, settings: Settings) -> dict[str, Any]:
        async with db.system() as conn:
            await as_pipeline(conn)
            crawl = await store_cdc.needing_crawl(conn, KIND, 100)
            claimed = await store_cdc.claim(
                conn, KIND, self.node, settings.connector_concurrency * 8, settings.connector_lease_seconds
            )
            idle = await store_cdc.claim_idle(conn, KIND, self.node, 10, settings.connector_lease_seconds)
        for row in crawl:
            async with db.tenant(row["tenant_id"]) as conn:
                await store.request_run(conn, row["tenant_id"], row["connector_id"], f"connector:{row['connector_id']}")
        if (claimed or idle) and self._keyring is None:
            self._keyring = Keyring.from_settings(settings)
        for row in idle:
            assert self._keyring is not None
            consumer = Consumer(db, settings, self._keyring, self.node, row["tenant_id"], row["connector_id"])
            await consumer.retire()
        for row in claimed:
            key = (row["tenant_id"], row["connector_id"])
            if key in self.running:
                continue
            assert self._keyring is not None
            consumer = Consumer(db, settings, self._keyring, self.node, row["tenant_id"], row["connector_id"])
            task = asyncio.create_task(consumer.run(), name=f"lily-cdc-{row['connector_id']}")
            self.running[key] = task
            task.add_done_callback(lambda _t, k=key: self.running.pop(k, None))  # type: ignore[misc]
        return {
            "running": len(self.running),
            "started": len(claimed),
            "crawls_requested": len(crawl),
            "slots_dropped": len(idle),
        }

    async def stop(self) -> None:
        """Stop every consumer of this process and give their leases back (a clean shutdown)."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Consumer:
    """Streams one connector's slot into Lily's log (see the module doc)."""

    def __init__(
        self, db: Database, settings: Settings, keyring: Keyring, node: str, tenant_id: str, connector_id: UUID
    ) -> None:
        self.db, self.settings, self.keyring, self.node = db, settings, keyring, node
        self.tenant_id, self.connector_id = tenant_id, connector_id
        self.source = rules.source_of(str(connector_id))
        self.secrets: list[str] = []
        self.state: dict[str, Any] = {}
        self.config: CdcConfig | None = None

    async def run(self) -> None:
        try:
            await self._stream()
        except asyncio.CancelledError:
            await asyncio.shield(self._release())
            raise
        except Exception as exc:
            error = rules.trimmed_error(scrub(f"{type(exc).__name__}: {exc}", self.secrets))
            log.warning("CDC consumer of connector %s stopped: %s", self.connector_id, error)
            with contextlib.suppress(Exception):
                await self._save({**self.state, "error": error, "error_at": _now()})
            await self._release()

    async def _release(self) -> None:
        with contextlib.suppress(Exception):
            async with self.db.tenant(self.tenant_id) as conn:
                await store_cdc.release(conn, self.tenant_id, self.connector_id, self.node)

    async def _row(self) -> Mapping[str, Any] | None:
        async with self.db.tenant(self.tenant_id) as conn:
            return await store_cdc.holds_lease(conn, self.tenant_id, self.connector_id, self.node)

    async def _gone(self) -> bool:
        async with self.db.tenant(self.tenant_id) as conn:
            return await store.load_for_run(conn, self.tenant_id, self.connector_id) is None

    async def _save(self, state: dict[str, Any]) -> None:
        state = with_health(state)
        async with self.db.tenant(self.tenant_id) as conn:
            await store.save_state(conn, self.tenant_id, self.connector_id, state)
        self.state = state

    def _open(self, row: Mapping[str, Any]) -> CdcConfig:
        opened = self.keyring.open(row["config_sealed"]) if row["config_sealed"] else {}
        self.secrets = [str(v) for v in opened.values() if v]
        try:
            config = CdcConfig.model_validate({**row["config"], **opened})
        except ValidationError as exc:
            raise ValueError(f"the stored config no longer validates: {exc.errors()[0].get('msg')}") from None
        self.config = config
        self.state = dict(row["state"] or {})
        return config

    async def retire(self) -> None:
        """Drop the slot of a disabled connector nobody has read for too long (its lease is held); when
        it is enabled again it crawls and makes a new one."""
        try:
            row = await self._row()
            if row is None or row["active"]:
                return
            config = self._open(row)
            await self._fall_back(
                config, str(self.state["slot"]), "disabled for longer than max_down_seconds", crawl=False
            )
        except Exception as exc:
            error = rules.trimmed_error(scrub(f"{type(exc).__name__}: {exc}", self.secrets))
            log.warning("could not drop the slot of disabled CDC connector %s: %s", self.connector_id, error)
            await self._release()

    async def _stream(self) -> None:
        row = await self._row()
        if row is None or not row["active"]:
            return
        config = self._open(row)
        slot = str(self.state["slot"])
        last = self.state.get("confirmed_at") or self.state.get("since")
        if last and (datetime.now(UTC) - datetime.fromisoformat(last)).total_seconds() > config.max_down_seconds:
            await self._fall_back(config, slot, f"not read for more than {config.max_down_seconds} s")
            return
        guard = TargetGuard.from_settings(self.settings, self.db.url)
        namespace, database = namespace_of(config)
        conn = await connect(config, guard.check, "lily-cdc")
        async with conn:
            if await source.slot_position(conn, slot) is None:
                await self._fall_back(config, slot, "the replication slot is gone", conn)
                return
            saved_at = renewed_at = 0.0
            while True:
                now = time.monotonic()
                if now - renewed_at > self.settings.connector_lease_seconds / 3:
                    row = await self._row()
                    if row is None:
                        if await self._gone():
                            await source.drop_slot(conn, slot)
                            log.info("connector %s was deleted: dropped its slot %s", self.connector_id, slot)
                        return
                    if not row["active"]:
                        await self._release()
                        return
                    async with self.db.tenant(self.tenant_id) as lconn:
                        await store.renew_lease(
                            lconn, self.tenant_id, self.connector_id, self.node, self.settings.connector_lease_seconds
                        )
                    renewed_at = now
                position = int(self.state.get("lsn") or 0)
                transactions, safe = await source.read(conn, slot, PEEK_LIMIT)
                fresh = [t for t in transactions if t.lsn > position]
                if fresh:
                    await self._apply(conn, config, namespace, database, fresh, max(safe, fresh[-1].lsn))
                    saved_at = now
                elif safe > position and now - saved_at > HEARTBEAT_SECONDS:
                    await self._heartbeat(conn, slot, safe)
                    saved_at = now
                stored = int(self.state.get("lsn") or 0)
                if stored > 0:
                    await source.advance(conn, slot, stored)
                lag = self.state.get("lag_bytes")
                if isinstance(lag, int) and lag > config.max_lag_bytes:
                    await self._fall_back(config, slot, f"the slot fell {lag} bytes behind", conn)
                    return
                if fresh:
                    continue  # more may be waiting
                await asyncio.sleep(self.settings.cdc_poll_seconds)

    async def _heartbeat(self, conn: source.Conn, slot: str, safe: int) -> None:
        lag = await source.lag_bytes(conn, slot)
        await self._save({**self.state, "lsn": safe, "lag_bytes": lag, "confirmed_at": _now(), "error": None})
        with contextlib.suppress(psycopg.Error):
            await source.trim_log(conn, LOG_TRIM_SECONDS)

    async def _apply(
        self,
        conn: source.Conn,
        config: CdcConfig,
        namespace: str,
        database: str,
        transactions: list[Transaction],
        upto: int,
    ) -> None:
        """Append what the transactions changed and the new position in one transaction of Lily's."""
        pairs = [p for p in affected([r for t in transactions for r in t.rows]) if catalog.wanted(p, config)]
        names = {catalog.name_of(namespace, database, p): p for p in pairs}
        found, notes = await catalog.read(conn, config, namespace, database, pairs, self.source) if pairs else ({}, [])
        lag = await source.lag_bytes(conn, str(self.state["slot"]))
        state = {**self.state, "lsn": upto, "lag_bytes": lag, "confirmed_at": _now(), "error": None}
        state["ddl"] = int(self.state.get("ddl") or 0) + sum(len(t.rows) for t in transactions)
        if notes:
            state["notes"] = notes[-10:]
        async with self.db.tenant(self.tenant_id) as lconn:
            previous = await store.fingerprints(lconn, self.tenant_id, self.connector_id) if names else {}
            events: list[NewEvent] = []
            seen: dict[str, str] = {}
            removed: list[str] = []
            for qn in names:
                obj = found.get(qn)
                if obj is not None:
                    digest = fingerprint(obj)
                    if previous.get(qn) != digest:
                        events.extend(self._events(obj, previous.get(qn), digest))
                        seen[qn] = digest
                elif qn in previous:
                    events.append(self._new(qn, ASSET_DELETE, {}))
                    removed.append(qn)
            if events:
                await store_log.append(lconn, events, self.settings.partitions)
            if seen or removed:
                await store.record_seen(lconn, self.tenant_id, self.connector_id, seen, removed)
            state["events"] = int(self.state.get("events") or 0) + len(events)
            state = with_health(state)
            await store.save_state(lconn, self.tenant_id, self.connector_id, state)
        self.state = state

    def _new(self, subject: str, kind: str, payload: dict[str, Any]) -> NewEvent:
        return NewEvent(
            self.tenant_id, subject, kind, payload, self.source, f"cdc:{self.connector_id}", source=self.source
        )

    def _events(self, obj: Observed, before: str | None, digest: str) -> list[NewEvent]:
        # As the crawl's run machinery does it: the asset if that part changed; the lineage if that part
        # changed, the old upstream edges removed first.
        asset_before, _, lineage_before = (before or "").partition("|")
        asset_now, _, lineage_now = digest.partition("|")
        name = obj.qualified_name
        out = []
        if asset_before != asset_now:
            out.append(self._new(name, ASSET_UPSERT, {**obj.asset, "qualified_name": name}))
        if lineage_before != lineage_now:
            if lineage_before and lineage_before != _NO_LINEAGE:
                payload = {"asset_id": str(asset_id_for(self.tenant_id, name)), "direction": "upstream"}
                out.append(self._new(name, LINEAGE_DELETE, payload))
            if obj.lineage is not None:
                out.append(self._new(name, LINEAGE_UPSERT, dict(obj.lineage)))
        return out

    async def _fall_back(
        self, config: CdcConfig, slot: str, why: str, conn: source.Conn | None = None, *, crawl: bool = True
    ) -> None:
        """Drop the slot and ask for a crawl, which makes a new one (the source's disk comes first)."""
        log.warning("CDC connector %s falls back to a crawl: %s", self.connector_id, why)
        try:
            if conn is None:
                guard = TargetGuard.from_settings(self.settings, self.db.url)
                async with await connect(config, guard.check, "lily-cdc") as fresh:
                    await source.drop_slot(fresh, slot)
            else:
                await source.drop_slot(conn, slot)
        finally:
            async with self.db.tenant(self.tenant_id) as lconn:
                cleared = with_health(clear_slot_state(self.state, why))
                await store.save_state(lconn, self.tenant_id, self.connector_id, cleared)
                if crawl:
                    await store.request_run(lconn, self.tenant_id, self.connector_id, self.source)
                await store_cdc.release(lconn, self.tenant_id, self.connector_id, self.node)


def _now() -> str:
    return datetime.now(UTC).isoformat()
