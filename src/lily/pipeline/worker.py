"""The log consumer.

Any number of workers, in any number of processes, share the partitions without coordination:
a worker takes a partition with ``pg_try_advisory_xact_lock`` for one transaction, applies a batch,
records outcomes, advances the offset and commits — all at once. A worker killed at any point
(even ``kill -9``) loses its connection, PostgreSQL rolls back its transaction and frees the lock, and
the next worker to look picks the partition up with nothing applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from lily.store.db import Conn, Database, as_app_for, as_pipeline, as_pipeline_relaxed

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
        """Consume until ``stop`` is set; sleep on LISTEN when there is nothing to do.

        No error ends the loop: a worker that died on a bad row or a lost connection would leave its
        share of the partitions to the others silently. It logs, pauses and goes on instead.
        """
        while not stop.is_set():
            try:
                await self._consume(stop)
            except (psycopg.OperationalError, psycopg.errors.DeadlockDetected) as exc:
                log.warning("%s: database error, backing off: %s", self.name, exc)
                await _pause(stop, 0.5)
            except Exception:
                log.exception("%s: unexpected error, backing off", self.name)
                await _pause(stop, 1.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(self.db.url, autocommit=True) as listener:
            await listener.execute(f"LISTEN {store_log.LOG_CHANNEL}")
            while not stop.is_set():
                if not await self.drain_once(stop):
                    # Woken by an append's NOTIFY; the timeout catches retry_at expiring and any
                    # notification lost while the listener reconnected.
                    async for _ in listener.notifies(timeout=0.25, stop_after=1):
                        pass

    async def drain_once(self, stop: asyncio.Event | None = None) -> int:
        """One pass over the partitions with a backlog; the number of events processed."""
        async with self.db.system() as conn:
            parts = await store_log.partitions_with_backlog(conn)
        random.shuffle(parts)  # workers that start together spread over the partitions
        total = 0
        # At least four groups, so that several workers always find partitions the others left them.
        group = max(1, min(self.settings.worker_partitions_per_transaction, self.settings.partitions // 4))
        for i in range(0, len(parts), group):
            if stop is not None and stop.is_set():
                break  # shut down between transactions: nothing is left half-done
            total += await self.process_partitions(parts[i : i + group])
        return total

    async def process_partitions(self, partitions: list[int]) -> int:
        """Apply the next batches of several partitions in one transaction.

        Under a spread load each partition holds only an event or two; one transaction per partition
        would pay a commit and a dozen round trips per event. Claiming several at once amortises that.
        Order is kept: each partition's events stay in order, and a subject lives in one partition.
        If the combined batch fails, each partition is retried alone, which isolates the failing event.
        """
        if len(partitions) == 1:
            return await self.process_partition(partitions[0])
        outcome = _Outcome()
        retry_alone: list[int] = []
        async with self.db.connection() as conn, conn.transaction():
            offsets = await store_log.try_claim_many(conn, partitions)
            if not offsets:
                return 0
            await as_pipeline_relaxed(conn)
            per_partition = max(1, self.settings.worker_batch_size // len(offsets))
            rows = await store_log.read_batches(conn, offsets, per_partition)
            if not rows:
                return 0
            events = sorted((PipelineEvent.from_row(r) for r in rows), key=lambda e: (e.partition, e.seq))
            try:
                async with conn.transaction():
                    await self._apply(conn, events)
                outcome.applied = events
            except Exception as exc:
                log.info(
                    "%s: batch over %s partitions failed (%s), retrying each alone",
                    self.name,
                    len(offsets),
                    _describe(exc),
                )
                retry_alone = sorted({e.partition for e in events})
        outcome.observe()
        done = len(outcome.applied)
        for partition in retry_alone:
            done += await self.process_partition(partition)
        return done

    async def process_partition(self, partition: int) -> int:
        """Claim ``partition`` and apply its next batch; how many events it moved past (0 if not ours)."""
        outcome = _Outcome()
        async with self.db.connection() as conn, conn.transaction():
            applied_seq = await store_log.try_claim(conn, partition)
            if applied_seq is None:
                return 0
            await as_pipeline_relaxed(conn)
            rows = await store_log.read_batch(conn, partition, applied_seq, self.settings.worker_batch_size)
            if not rows:
                return 0
            events = [PipelineEvent.from_row(r) for r in rows]
            try:
                async with conn.transaction():
                    await self._apply(conn, events)
                outcome.applied = events
            except Exception as exc:
                error = _describe(exc)
                if len(rows) > 1:
                    log.info("%s: batch on partition %s failed, isolating", self.name, partition)
                    outcome.applied, error = await self._apply_one_by_one(conn, partition, rows)
                done = len(outcome.applied)
                if done < len(rows):
                    outcome.failure = await self._record_failure(conn, PipelineEvent.from_row(rows[done]), error)
        # Only what committed is counted.
        outcome.observe()
        return len(outcome.applied) + (outcome.failure == "dead_lettered")

    async def _apply_one_by_one(
        self, conn: Conn, partition: int, rows: list[dict[str, Any]]
    ) -> tuple[list[PipelineEvent], str]:
        """Apply events singly until one fails: those that succeeded (effects kept), and the error."""
        await as_pipeline(conn)
        fresh = await store_log.read_batch(conn, partition, rows[0]["seq"] - 1, len(rows))
        applied: list[PipelineEvent] = []
        for row in fresh:
            event = PipelineEvent.from_row(row)
            try:
                async with conn.transaction():
                    await self._apply(conn, [event])
            except Exception as exc:
                return applied, _describe(exc)
            applied.append(event)
        return applied, ""

    async def _record_failure(self, conn: Conn, event: PipelineEvent, error: str) -> str:
        """Schedule a retry of ``event`` or, at the last attempt, dead-letter it; which one it was."""
        attempt = event.attempts + 1
        await as_pipeline(conn)
        if attempt >= self.settings.max_attempts:
            log.error("%s: event %s dead-lettered after %s attempts: %s", self.name, event.event_id, attempt, error)
            await store_log.dead_letter(
                conn,
                event_id=event.event_id,
                tenant_id=event.tenant_id,
                partition=event.partition,
                seq=event.seq,
                subject=event.subject,
                kind=event.kind,
                attempts=attempt,
                error=error,
            )
            return "dead_lettered"
        delay = backoff(attempt, self.settings)
        log.warning(
            "%s: event %s failed (attempt %s), retry in %.2fs: %s", self.name, event.event_id, attempt, delay, error
        )
        await store_log.record_retry(
            conn, event.event_id, event.partition, error, datetime.now(UTC) + timedelta(seconds=delay)
        )
        return "retry"

    async def _apply(self, conn: Conn, events: list[PipelineEvent]) -> None:
        """Run the stages over a partition's batch and commit outcomes and offset with the effects."""
        now = datetime.now(UTC)
        follow_ups: list[NewEvent] = []
        for round_ in _rounds(events):
            for tenant_id, group in _by_tenant(round_).items():
                await as_app_for(conn, tenant_id)
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
        await store_log.advance_many(conn, {e.partition: e.seq for e in events})  # the last seq of each


class _Outcome:
    """What one partition transaction did, reported to metrics after it committed."""

    def __init__(self) -> None:
        self.applied: list[PipelineEvent] = []
        self.failure: str | None = None  # "retry" or "dead_lettered"

    def observe(self) -> None:
        if self.applied:
            metrics.observe_batch(self.applied)
        if self.failure == "retry":
            metrics.RETRIED.inc()
        elif self.failure == "dead_lettered":
            metrics.DEAD_LETTERED.inc()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Back off for ``seconds``, or less if asked to stop meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _describe(exc: BaseException) -> str:
    # PostgreSQL text cannot hold NUL: an error message with one would fail the very UPDATE that
    # records it, and the event would be retried for ever without its attempts ever counting.
    return f"{type(exc).__name__}: {exc}".replace("\x00", "\\0")[:2000]


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
