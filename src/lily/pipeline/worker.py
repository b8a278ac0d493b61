"""The log consumer.

Any number of workers, in any number of processes, share the partitions without coordination:
a worker takes a partition with ``pg_try_advisory_xact_lock`` for one transaction, applies a batch,
records outcomes, advances the offset and commits — all at once. A worker killed at any point
(even ``kill -9``) loses its connection, PostgreSQL rolls back its transaction and frees the lock, and
the next worker to look picks the partition up with nothing applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from lily.config import Settings
from lily.domain.events import NewEvent
from lily.pipeline import metrics
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.pipeline.stages import Pipeline
from lily.store import log as store_log
from lily.store.db import Conn, Database, as_app, as_pipeline, set_tenant

log = logging.getLogger(__name__)


def backoff(attempt: int, settings: Settings) -> float:
    """Exponential backoff with full jitter on the upper half: base·2^(n-1), capped."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


class Worker:
    def __init__(self, db: Database, settings: Settings, pipeline: Pipeline, *, name: str = "worker") -> None:
        self.db = db
        self.settings = settings
        self.pipeline = pipeline
        self.name = name

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; sleep on LISTEN when there is nothing to do."""
        listener = await psycopg.AsyncConnection.connect(self.db.url, autocommit=True)
        try:
            await listener.execute(f"LISTEN {store_log.LOG_CHANNEL}")
            while not stop.is_set():
                try:
                    done = await self.drain_once()
                except (psycopg.OperationalError, psycopg.errors.DeadlockDetected) as exc:
                    log.warning("%s: database error, backing off: %s", self.name, exc)
                    done = 0
                    await asyncio.sleep(0.5)
                if not done:
                    async for _ in listener.notifies(timeout=0.25, stop_after=1):
                        pass
        finally:
            await listener.close()

    async def drain_once(self) -> int:
        """One pass over the partitions with a backlog; the number of events processed."""
        async with self.db.system() as conn:
            parts = await store_log.partitions_with_backlog(conn)
        random.shuffle(parts)  # workers that start together spread over the partitions
        total = 0
        for partition in parts:
            total += await self.process_partition(partition)
        return total

    async def process_partition(self, partition: int) -> int:
        async with self.db.connection() as conn, conn.transaction():
            applied_seq = await store_log.try_claim(conn, partition)
            if applied_seq is None:
                return 0
            await as_pipeline(conn)
            rows = await store_log.read_batch(conn, partition, applied_seq, self.settings.worker_batch_size)
            if not rows:
                return 0
            events = [PipelineEvent.from_row(r) for r in rows]
            try:
                async with conn.transaction():
                    await self._apply(conn, events)
                return len(events)
            except Exception as exc:
                done, error = 0, _describe(exc)
                if len(rows) > 1:
                    log.info("%s: batch on partition %s failed, isolating", self.name, partition)
                    done, error = await self._apply_one_by_one(conn, partition, rows)
                if done < len(rows):
                    await self._record_failure(conn, PipelineEvent.from_row(rows[done]), error)
                return done

    async def _apply_one_by_one(
        self, conn: Conn, partition: int, rows: list[dict[str, Any]]
    ) -> tuple[int, str]:
        """Apply events singly until one fails: how many succeeded (effects kept), and the error."""
        await as_pipeline(conn)
        fresh = await store_log.read_batch(conn, partition, rows[0]["seq"] - 1, len(rows))
        for i, row in enumerate(fresh):
            try:
                async with conn.transaction():
                    await self._apply(conn, [PipelineEvent.from_row(row)])
            except Exception as exc:
                return i, _describe(exc)
        return len(fresh), ""

    async def _record_failure(self, conn: Conn, event: PipelineEvent, error: str) -> None:
        attempt = event.attempts + 1
        await as_pipeline(conn)
        if attempt >= self.settings.max_attempts:
            log.error("%s: event %s dead-lettered after %s attempts: %s", self.name, event.event_id,
                      attempt, error)
            await store_log.dead_letter(conn, event.event_id, event.partition, event.seq, error)
            metrics.DEAD_LETTERED.inc()
        else:
            delay = backoff(attempt, self.settings)
            log.warning("%s: event %s failed (attempt %s), retry in %.2fs: %s", self.name, event.event_id,
                        attempt, delay, error)
            await store_log.record_retry(conn, event.event_id, event.partition, error,
                                         datetime.now(UTC) + timedelta(seconds=delay))
            metrics.RETRIED.inc()

    async def _apply(self, conn: Conn, events: list[PipelineEvent]) -> None:
        """Run the stages over a partition's batch and commit outcomes and offset with the effects."""
        now = datetime.now(UTC)
        follow_ups: list[NewEvent] = []
        for round_ in _rounds(events):
            for tenant_id, group in _by_tenant(round_).items():
                await as_app(conn)
                await set_tenant(conn, tenant_id)
                ctx = BatchContext(conn=conn, tenant_id=tenant_id, settings=self.settings, now=now)
                await self.pipeline.run(ctx, group)
                follow_ups.extend(ctx.follow_ups)
        await as_pipeline(conn)
        if follow_ups:
            await store_log.append(conn, follow_ups, self.settings.partitions)
        await store_log.record_outcomes(
            conn,
            [e.event_id for e in events],
            [e.outcome or "applied" for e in events],
            [e.result for e in events],
            [e.error for e in events],
        )
        await store_log.advance(conn, events[0].partition, events[-1].seq)
        metrics.observe_batch(events)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _rounds(events: list[PipelineEvent]) -> list[list[PipelineEvent]]:
    """Split a batch so no round holds two events of one subject; rounds keep the log's order."""
    rounds: list[list[PipelineEvent]] = []
    seen: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event.tenant_id, event.subject)
        index = seen.get(key, 0)
        seen[key] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(event)
    return rounds


def _by_tenant(events: list[PipelineEvent]) -> dict[str, list[PipelineEvent]]:
    groups: dict[str, list[PipelineEvent]] = {}
    for event in events:
        groups.setdefault(event.tenant_id, []).append(event)
    return groups
