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
import copy
import logging
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from lily.config import Settings
from lily.domain.changes import ChangeEvent
from lily.domain.errors import ServiceUnavailable
from lily.domain.events import NewEvent
from lily.pipeline import metrics
from lily.pipeline.context import BatchContext
from lily.pipeline.failures import is_permanent
from lily.pipeline.model import PipelineEvent
from lily.pipeline.stages import Pipeline
from lily.store import changes as store_changes
from lily.store import log as store_log
from lily.store.db import Conn, Database, as_app_for, as_pipeline, as_pipeline_relaxed

log = logging.getLogger(__name__)


# Worker time all lanes get in one pass over the partitions: the pass must stay short for the tenants
# waiting behind them (tenant B's p99 in tests/pipeline/test_noisy_neighbour.py). Passes follow each
# other at once, so a tenant alone with its lanes still has the worker nearly to itself.
_PASS_LANE_SECONDS = 0.1
_LANE_FIRST_CHUNK = 4  # events a lane (or a tenant opening one) is first given; doubles while clean
_LANE_MAX_CHUNK = 64
_SUSPECT_SECONDS = 5.0  # how long a tenant whose batch failed has its events go to its lanes first


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
        # When this pass's side work must stop (None outside a pass), and whether some was done.
        self._side_until: float | None = None
        self._side_used = False
        self._chunks: dict[tuple[int, str], int] = {}  # a lane's last chunk size, to resume at
        # Tenants whose events failed in a batch lately → until when their events skip the batches
        # and go to their lanes. A hint of this worker's, never needed for correctness.
        self._suspects: dict[str, float] = {}
        # Partition → (tenant, seq): every event of the partition up to seq was that tenant's.
        self._alone_up_to: dict[int, tuple[str, int]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; sleep on LISTEN when there is nothing to do.

        No error ends the loop: a worker that died on a bad row or a lost connection would leave its
        share of the partitions to the others silently. It logs, pauses and goes on instead.
        """
        while not stop.is_set():
            try:
                await self._consume(stop)
            except (psycopg.OperationalError, psycopg.errors.DeadlockDetected, ServiceUnavailable) as exc:
                log.warning("%s: database error, backing off: %s", self.name, exc)
                await _pause(stop, 0.5)
            except Exception:
                log.exception("%s: unexpected error, backing off", self.name)
                await _pause(stop, 1.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(self.db.url, autocommit=True) as listener:
            await listener.execute(f"LISTEN {store_log.LOG_CHANNEL}")
            while not stop.is_set():
                moved = await self.drain_once(stop)
                if linger := self.linger_after(moved):
                    await _pause(stop, linger)
                if not moved:
                    # Woken by a lily_log notification (lily.pipeline.wake); the timeout catches retry_at
                    # expiring and any notification lost while the listener reconnected.
                    async for _ in listener.notifies(timeout=0.25, stop_after=1):
                        pass

    def linger_after(self, moved: int) -> float:
        """How long to wait before the next pass after one that moved ``moved`` events.

        A pass of many events means writes arrive faster than one at a time: waiting a little lets the
        next batch grow, and each batch's fixed cost (a dozen statements, a commit, the wake-ups of every
        waiting request) is shared by more events. At 500 creates a second this took about 0.2 ms of CPU
        off each (bench/api.py). A pass of a few events (a lone writer, a quiet tenant) goes on at once:
        its next write is not kept waiting for company that is not coming."""
        return self.settings.worker_linger_seconds if moved >= self.settings.worker_linger_after_events else 0.0

    async def drain_once(self, stop: asyncio.Event | None = None) -> int:
        """One pass over the partitions with work; the number of events it moved past.

        Every partition's next batch first, then side work (parked subjects' retries, lanes) for
        about ``_PASS_LANE_SECONDS``: whoever writes an ordinary event waits for one pass at most,
        however much is held.
        """
        async with self.db.system() as conn:
            work = await store_log.partitions_with_backlog(conn)
        # Partitions with side work (a parked subject due, a lane) are done alone; the rest in groups.
        alone = [p for p, side in work.items() if side]
        parts = [p for p, side in work.items() if not side]
        random.shuffle(alone)  # workers that start together spread over the partitions
        random.shuffle(parts)
        total = 0
        side: list[int] = []
        # One transaction for every clean partition with work, unless configured smaller: each transaction
        # costs a dozen statements and a commit whatever it holds, and at 500 creates a second one per pass
        # instead of up to four took p99 accept→apply from about 200 to 150 ms. Where several workers
        # share the log, a smaller group leaves the others partitions to take meanwhile.
        group = self.settings.worker_partitions_per_transaction or len(parts) or 1
        batches = [[p] for p in alone] + [parts[i : i + group] for i in range(0, len(parts), group)]
        for batch in batches:
            if stop is not None and stop.is_set():
                return total  # shut down between transactions: nothing is left half-done
            done, needs_side = await self._process_group(batch)
            total += done
            side.extend(needs_side)
        self._side_until, self._side_used = time.monotonic() + _PASS_LANE_SECONDS, False
        try:
            for partition in side:
                if stop is not None and stop.is_set():
                    break
                if self._side_time_is_up():
                    if await self._anyone_waiting():
                        break  # the next pass serves them first, then side work goes on
                    # Nobody else waits: the lanes may have the worker (it is theirs to share).
                    self._side_until = time.monotonic() + _PASS_LANE_SECONDS
                total += await self._side_work(partition)
        finally:
            self._side_until = None
        return total

    async def _anyone_waiting(self) -> bool:
        async with self.db.system() as conn:
            await as_pipeline(conn)
            return await store_log.anyone_waiting(conn)

    async def process_partitions(self, partitions: list[int]) -> int:
        """Apply the next batches of several partitions in one transaction.

        Under a spread load each partition holds only an event or two; one transaction per partition
        would pay a commit and a dozen round trips per event. Claiming several at once amortises that.
        Order is kept: each partition's events stay in order, and a subject lives in one partition.
        Only clean partitions (nothing held, no tenant taking more than its share) go together; the
        others, and all of them if the combined batch fails, are done alone right after.
        """
        done, side = await self._process_group(partitions)
        for partition in side:
            done += await self._side_work(partition)
        return done

    async def _process_group(self, partitions: list[int]) -> tuple[int, list[int]]:
        """:meth:`process_partitions` without the side work: (events moved past, partitions that have
        side work waiting)."""
        if len(partitions) == 1:
            moved, side = await self._read_on(partitions[0])
            return moved, [partitions[0]] if side else []
        outcome = _Outcome()
        alone: list[int] = []
        laned: list[int] = []
        async with self.db.connection() as conn, conn.transaction():
            claimed = await store_log.try_claim_many(conn, partitions)
            alone = sorted(p for p, c in claimed.items() if not c.clean)
            offsets = {p: c.applied_seq for p, c in claimed.items() if c.clean}
            if offsets:
                await as_pipeline_relaxed(conn)
                per_partition = max(1, self.settings.worker_batch_size // len(offsets))
                rows = await store_log.read_batches(conn, offsets, per_partition)
                flooded = set(await self._flooded(conn, rows, per_partition))
                flooded |= {r["partition"] for r in rows if self._suspect(r["tenant_id"])}
                if flooded:
                    alone.extend(sorted(flooded))
                    rows = [r for r in rows if r["partition"] not in flooded]
                events = sorted((PipelineEvent.from_row(r) for r in rows), key=lambda e: (e.partition, e.seq))
                if events:
                    try:
                        # Not in pipeline mode: a statement's rowcount is unknown there until the pipeline
                        # syncs, and handlers decide from it whether they wrote (column lineage did, and an
                        # OpenLineage resend then added audit entries).
                        async with conn.transaction():
                            await self._apply(conn, events)
                            await store_log.advance_many(conn, {e.partition: e.seq for e in events})
                        outcome.applied = events
                    except Exception as exc:
                        log.info(
                            "%s: batch over %s partitions failed (%s), splitting it by tenant",
                            self.name,
                            len(offsets),
                            _describe(exc),
                        )
                        await self._split_group(conn, events, exc, outcome)
                        laned = sorted({e.partition for e in events})  # their lanes want side work
        outcome.observe()
        done = len(outcome.applied) + len(outcome.held)
        waiting: list[int] = laned
        for partition in alone:
            moved, needs_side = await self._read_on(partition)
            done += moved
            if needs_side:
                waiting.append(partition)
        return done, waiting

    async def _split_group(
        self, conn: Conn, events: list[PipelineEvent], failure: BaseException, outcome: _Outcome
    ) -> None:
        """After a combined batch failed (with ``failure``): apply each tenant's events apart, in this
        transaction. A tenant whose events fail gets a lane in each partition it has events in (they
        are held there and isolated in its own share of time), and the partitions move on."""
        await as_pipeline(conn)
        fresh = await store_log.read_events(conn, [e.event_id for e in events])
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in fresh:
            groups.setdefault(row["tenant_id"], []).append(row)
        last = {e.partition: e.seq for e in events}  # each partition's batch ends here
        held: dict[int, list[int]] = {}
        for tenant_id, rows in sorted(groups.items(), key=lambda g: len(g[1])):  # the few first
            # A lone tenant is known to fail already: trying again would only cost another batch.
            exc: BaseException | None = failure if len(groups) == 1 else None
            if exc is None:
                tried = _copies(rows)
                exc = await self._attempt(conn, tried)
                if exc is None:
                    outcome.applied.extend(tried)
            if exc is not None:
                by_partition: dict[int, list[dict[str, Any]]] = {}
                for row in rows:
                    by_partition.setdefault(row["partition"], []).append(row)
                for partition, part_rows in by_partition.items():
                    lane = _Outcome()
                    await self._to_lane(conn, partition, tenant_id, part_rows, exc, lane)
                    held.setdefault(partition, []).extend(lane.held)
        for partition, seq in last.items():
            mine = held.get(partition, [])
            outcome.held.extend(mine)  # counted only: each partition's own list goes with its offset
            await store_log.finish_partition(conn, partition, seq, held=mine, side_changed=bool(mine))

    async def process_partition(self, partition: int) -> int:
        """Claim ``partition`` and process it; how many events it moved past (0 if not ours).

        First its next batch, reading past what is held; then, if it has any, its side work (parked
        subjects whose retry time has come, a share of each tenant lane) in a transaction of its own,
        so that the batch's events are not kept waiting for it.
        """
        moved, side = await self._read_on(partition)
        if side:
            moved += await self._side_work(partition)
        return moved

    async def _read_on(self, partition: int) -> tuple[int, bool]:
        """Apply the partition's next batch, holding the events of parked subjects and lanes, and open a
        lane for a tenant taking more than its share; (events moved past, whether side work waits)."""
        outcome = _Outcome()
        async with self.db.connection() as conn, conn.transaction():
            got = await store_log.claim_for_apply(conn, partition)
            if got is None:
                return 0, False
            claimed, holding = got
            offset = claimed.applied_seq
            parked, lanes = holding.parked, holding.lanes
            limit = self.settings.worker_batch_size
            if lanes:
                rows, top, held = await store_log.read_past_lanes(conn, partition, offset, list(lanes), limit)
                outcome.held.extend(held)
            else:
                rows = await store_log.read_batch(conn, partition, offset, limit)
                top = int(rows[-1]["seq"]) if rows else offset
            flood = (await self._flooded(conn, rows, limit)).get(partition)
            if flood is not None:
                rows = await self._open_lane(conn, partition, rows, flood, outcome)
            rows = await self._lane_suspects(conn, partition, rows, outcome)
            await self._apply_window(conn, partition, [PipelineEvent.from_row(r) for r in rows], outcome, parked)
            if top > offset or outcome.changed:
                await store_log.finish_partition(
                    conn,
                    partition,
                    top,
                    held=outcome.held,
                    released=outcome.released,
                    side_changed=outcome.side_changed,
                )
        # Only what committed is counted.
        outcome.observe()
        return outcome.moved, claimed.due or bool(lanes) or outcome.side_changed

    async def _side_work(self, partition: int) -> int:
        """Retry the partition's parked subjects whose time has come and give each lane its share."""
        outcome = _Outcome()
        async with self.db.connection() as conn, conn.transaction():
            got = await store_log.claim_for_apply(conn, partition)
            if got is None:
                return 0
            claimed, holding = got
            parked = holding.parked
            if claimed.due:
                await self._retry_parked(conn, partition, claimed.applied_seq, outcome)
                parked = await store_log.parked_in(conn, partition)
            if holding.lanes:
                await self._drain_lanes(conn, partition, claimed.applied_seq, dict(holding.lanes), parked, outcome)
            if outcome.changed:
                await store_log.finish_partition(
                    conn,
                    partition,
                    claimed.applied_seq,
                    held=outcome.held,
                    released=outcome.released,
                    side_changed=outcome.side_changed,
                )
        outcome.observe()
        return outcome.moved

    async def _retry_parked(self, conn: Conn, partition: int, offset: int, outcome: _Outcome) -> None:
        """Apply, in order, the queues of the parked subjects whose retry time has come; unpark those
        that emptied. The head is tried alone first: it is the event that failed, and if it fails
        again (it is parked anew, or dead-lettered at its last try) that costs one attempt, not a
        batch's. Bounded by the batch size and by the pass's time for side work."""
        budget = self.settings.worker_batch_size
        for subject in await store_log.due_parked(conn, partition, budget):
            if budget <= 0 or self._side_time_is_up():
                break  # the others stay due: the next pass takes them
            self._side_used = True
            key = (subject["tenant_id"], subject["subject"])
            rows = await store_log.parked_queue(conn, *key, offset, budget)
            emptied = len(rows) < budget
            budget -= len(rows)
            events = [PipelineEvent.from_row(r) for r in rows]
            again: set[tuple[str, str]] = set()
            await self._apply_all(conn, events[:1], outcome, again, from_held=True)
            await self._apply_all(conn, events[1:], outcome, again, from_held=True)
            if key in again:
                pass  # parked anew, with its next retry time
            elif emptied:
                await store_log.unpark(conn, *key)  # the queue is empty: later events go straight through
            else:
                await store_log.park(conn, partition, *key, datetime.now(UTC))  # more queued: next pass
            outcome.side_changed = True

    async def _drain_lanes(
        self,
        conn: Conn,
        partition: int,
        offset: int,
        lanes: dict[str, int],
        parked: set[tuple[str, str]],
        outcome: _Outcome,
    ) -> None:
        """Apply each lane's held events in order while the pass's time for side work lasts; close the
        lanes that emptied.

        A budget of time, not of events: a lane full of failing events costs many attempts per event,
        and the tenants waiting for the pass to reach their partition must not pay for that.
        """
        for tenant_id, next_seq in list(lanes.items()):
            if self._side_time_is_up():
                break  # the other lanes wait for the next pass
            chunk = self._chunks.pop((partition, tenant_id), _LANE_FIRST_CHUNK)
            while True:
                self._side_used = True
                started = time.monotonic()
                rows = await store_log.lane_events(conn, partition, tenant_id, next_seq, offset, chunk)
                failed = outcome.failures
                # Events of a parked subject stay held: they belong to the subject's queue.
                await self._apply_all(conn, [PipelineEvent.from_row(r) for r in rows], outcome, parked, from_held=True)
                if len(rows) < chunk:
                    await store_log.move_lane(conn, partition, tenant_id, None)
                    del lanes[tenant_id]
                    break
                next_seq = int(rows[-1]["seq"]) + 1
                # Halve on a failure, double on success: dense failures get small chunks (fewer
                # wasted attempts per event), clean lanes large ones (fewer round trips).
                took = (time.monotonic() - started) / chunk
                chunk = max(1, chunk // 2) if outcome.failures > failed else min(chunk * 2, _LANE_MAX_CHUNK)
                # A chunk likely to run past the pass's time waits for the next pass.
                if self._side_time_is_up() or time.monotonic() + took * chunk > (self._side_until or 0):
                    await store_log.move_lane(conn, partition, tenant_id, next_seq)
                    self._chunks[(partition, tenant_id)] = chunk  # a hint only: lost with the process
                    break
            outcome.side_changed = True

    def _side_time_is_up(self) -> bool:
        """True once this pass's side work had its time; some side work is always done, so every
        lane and parked subject moves on over the passes."""
        if self._side_until is None:  # called outside drain_once: give this call its own time
            self._side_until, self._side_used = time.monotonic() + _PASS_LANE_SECONDS, False
        return self._side_used and time.monotonic() >= self._side_until

    async def _flooded(self, conn: Conn, rows: list[dict[str, Any]], limit: int) -> dict[int, str]:
        """Partitions whose batch is full and mostly one tenant's while another tenant's events wait
        behind it: partition → the flooding tenant. A tenant alone in a partition is not throttled."""
        if len(rows) < limit:
            return {}  # not one partition's batch can be full (the common case: nothing to look at)
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_partition.setdefault(row["partition"], []).append(row)
        candidates: dict[int, tuple[str, int]] = {}
        for partition, part_rows in by_partition.items():
            if len(part_rows) < limit:
                continue
            (tenant_id, n), *_ = Counter(r["tenant_id"] for r in part_rows).most_common(1)
            if n > limit // 2:
                last = int(part_rows[-1]["seq"])
                # Up to where an earlier look found only this tenant's events: no need to walk again.
                seen_tenant, seen_top = self._alone_up_to.get(partition, ("", 0))
                candidates[partition] = (tenant_id, max(last, seen_top) if seen_tenant == tenant_id else last)
        if not candidates:
            return {}
        found = await store_log.others_waiting(conn, candidates)
        for partition, top in found.items():
            if top is not None:
                self._alone_up_to[partition] = (candidates[partition][0], top)
        return {p: candidates[p][0] for p, top in found.items() if top is None}

    async def _open_lane(
        self,
        conn: Conn,
        partition: int,
        rows: list[dict[str, Any]],
        tenant_id: str,
        outcome: _Outcome,
    ) -> list[dict[str, Any]]:
        """Give ``tenant_id`` a lane from its first event past its share of this batch; the rows left
        to apply now (its events in the lane are held)."""
        share = _LANE_FIRST_CHUNK
        keep: list[dict[str, Any]] = []
        taken = 0
        lane_from: int | None = None
        for row in rows:
            if row["tenant_id"] == tenant_id:
                if lane_from is None and taken >= share:
                    lane_from = int(row["seq"])
                if lane_from is not None:
                    outcome.held.append(int(row["seq"]))
                    continue
                taken += 1
            keep.append(row)
        assert lane_from is not None
        log.info("%s: tenant %s takes a lane in partition %s from seq %s", self.name, tenant_id, partition, lane_from)
        await store_log.open_lane(conn, partition, tenant_id, lane_from)
        outcome.side_changed = True
        return keep

    async def _apply_window(
        self,
        conn: Conn,
        partition: int,
        events: list[PipelineEvent],
        outcome: _Outcome,
        parked: set[tuple[str, str]],
    ) -> None:
        """Apply a partition's batch. If it fails and holds several tenants' events, each tenant's are
        tried apart; a tenant whose events fail gets a lane, where they are isolated within its time
        budget, so the cost of its failures never falls on the others' events in the batch."""
        ready = self._hold_parked(events, outcome, parked, from_held=False)
        if not ready:
            return
        exc = await self._attempt(conn, ready)
        if exc is not None:
            fresh = await store_log.read_events(conn, [e.event_id for e in ready])
            groups: dict[str, list[dict[str, Any]]] = {}
            for row in fresh:
                groups.setdefault(row["tenant_id"], []).append(row)
            if len(groups) == 1:
                await self._to_lane(conn, partition, next(iter(groups)), fresh, exc, outcome)
                return
            for tenant_id, rows in sorted(groups.items(), key=lambda g: len(g[1])):  # the few first
                tried = _copies(rows)
                tenant_exc = await self._attempt(conn, tried)
                if tenant_exc is not None:
                    await self._to_lane(conn, partition, tenant_id, rows, tenant_exc, outcome)
                else:
                    outcome.done(tried, from_held=False)
            return
        outcome.done(ready, from_held=False)

    def _suspect(self, tenant_id: str) -> bool:
        until = self._suspects.get(tenant_id)
        if until is None:
            return False
        if until < time.monotonic():
            del self._suspects[tenant_id]
            return False
        return True

    async def _lane_suspects(
        self, conn: Conn, partition: int, rows: list[dict[str, Any]], outcome: _Outcome
    ) -> list[dict[str, Any]]:
        """Send the events of tenants whose events failed lately straight to their lanes, without
        trying them in the batch first: a failing batch costs every event of it one wasted attempt."""
        if not self._suspects or not rows:
            return rows
        mine: dict[str, list[dict[str, Any]]] = {}
        keep = []
        for row in rows:
            if self._suspect(row["tenant_id"]):
                mine.setdefault(row["tenant_id"], []).append(row)
            else:
                keep.append(row)
        for tenant_id, held in mine.items():
            await store_log.open_lane(conn, partition, tenant_id, int(held[0]["seq"]))
            outcome.held.extend(int(row["seq"]) for row in held)
            outcome.side_changed = True
        return keep

    async def _to_lane(
        self,
        conn: Conn,
        partition: int,
        tenant_id: str,
        rows: list[dict[str, Any]],
        exc: BaseException,
        outcome: _Outcome,
    ) -> None:
        """Hold a tenant's failing events of a batch in its lane: isolating them may cost an attempt
        per event, and in the lane that cost comes out of the tenant's own share of worker time."""
        log.info(
            "%s: %s events of tenant %s failed on partition %s (%s); they go to its lane",
            self.name,
            len(rows),
            tenant_id,
            partition,
            _describe(exc)[:200],
        )
        await store_log.open_lane(conn, partition, tenant_id, int(rows[0]["seq"]))
        outcome.held.extend(int(row["seq"]) for row in rows)
        outcome.side_changed = True
        self._suspects[tenant_id] = time.monotonic() + _SUSPECT_SECONDS

    @staticmethod
    def _hold_parked(
        events: list[PipelineEvent], outcome: _Outcome, parked: set[tuple[str, str]], *, from_held: bool
    ) -> list[PipelineEvent]:
        """The events not of a parked subject; those that are stay held (counted, if new)."""
        ready: list[PipelineEvent] = []
        for event in events:
            if (event.tenant_id, event.subject) in parked:
                if not from_held:
                    outcome.held.append(event.seq)
            else:
                ready.append(event)
        return ready

    async def _apply_all(
        self,
        conn: Conn,
        events: list[PipelineEvent],
        outcome: _Outcome,
        parked: set[tuple[str, str]],
        *,
        from_held: bool,
    ) -> None:
        """Apply ``events`` (one partition's, in order) as one batch if it succeeds, else isolate the
        failing ones. Events of subjects in ``parked`` are held, and a subject parked on the way joins
        it, so its later events are held too. ``from_held``: the events were held before (a parked
        subject's queue, a lane), so deciding one releases it and holding one changes nothing."""
        ready = self._hold_parked(events, outcome, parked, from_held=from_held)
        if not ready:
            return
        exc = await self._attempt(conn, ready)
        if exc is not None:
            log.info("%s: batch of %s on partition %s failed, isolating", self.name, len(ready), ready[0].partition)
            fresh = await store_log.read_events(conn, [e.event_id for e in ready])
            await self._isolate(conn, fresh, exc, outcome, parked, from_held=from_held)
            return
        outcome.done(ready, from_held=from_held)

    async def _isolate(
        self,
        conn: Conn,
        rows: list[dict[str, Any]],
        failure: BaseException | None,
        outcome: _Outcome,
        parked: set[tuple[str, str]],
        *,
        from_held: bool,
    ) -> None:
        """Bisect ``rows`` (``failure``: what applying all of them raised, if known) until each failing
        event is alone, applying the rest in order. k poison events among n cost about k·log n tries."""
        ready = []
        for row in rows:
            if (row["tenant_id"], row["subject"]) in parked:
                if not from_held:
                    outcome.held.append(int(row["seq"]))
                failure = None  # the set changed: what failed before says nothing about this one
            else:
                ready.append(row)
        if not ready:
            return
        if failure is None:
            events = _copies(ready)
            failure = await self._attempt(conn, events)
            if failure is None:
                outcome.done(events, from_held=from_held)
                return
        if len(ready) == 1:
            await self._record_failure(conn, PipelineEvent.from_row(ready[0]), failure, outcome, parked, from_held)
            return
        mid = len(ready) // 2
        await self._isolate(conn, ready[:mid], None, outcome, parked, from_held=from_held)
        await self._isolate(conn, ready[mid:], None, outcome, parked, from_held=from_held)

    async def _record_failure(
        self,
        conn: Conn,
        event: PipelineEvent,
        exc: BaseException,
        outcome: _Outcome,
        parked: set[tuple[str, str]],
        from_held: bool,
    ) -> None:
        """Dead-letter ``event`` at once if the failure is permanent or this was its last attempt;
        else park its subject until the retry time, holding the event and its subject's later ones."""
        attempt = event.attempts + 1
        error = _describe(exc)
        permanent = is_permanent(exc)
        outcome.failures += 1
        await as_pipeline(conn)
        if permanent or attempt >= self.settings.max_attempts:
            why = "a permanent failure" if permanent else f"{attempt} attempts"
            log.error("%s: event %s dead-lettered after %s: %s", self.name, event.event_id, why, error)
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
            outcome.dead_lettered += 1
            if from_held:
                outcome.released.append(event.seq)
            return
        delay = backoff(attempt, self.settings)
        log.warning(
            "%s: event %s failed (attempt %s), its subject waits %.2fs: %s",
            self.name,
            event.event_id,
            attempt,
            delay,
            error,
        )
        await store_log.record_retry(conn, event.event_id, error)
        await store_log.park(
            conn, event.partition, event.tenant_id, event.subject, datetime.now(UTC) + timedelta(seconds=delay)
        )
        parked.add((event.tenant_id, event.subject))
        outcome.retried += 1
        outcome.side_changed = True
        if not from_held:
            outcome.held.append(event.seq)

    async def _attempt(self, conn: Conn, events: list[PipelineEvent]) -> BaseException | None:
        """Apply ``events`` in a savepoint: None if they applied, else the error (their effects rolled
        back, the connection back in the pipeline role for the bookkeeping that follows)."""
        try:
            async with conn.transaction():
                await self._apply(conn, events)
        except Exception as exc:
            await as_pipeline(conn)
            return exc
        return None

    async def _apply(self, conn: Conn, events: list[PipelineEvent]) -> None:
        """Run the stages over a batch and record its outcomes and follow-ups, in the caller's
        transaction (the caller moves the offsets).

        Everywhere in this module the role is the pipeline's once a partition is claimed: this sets
        the tenant's role per group and the pipeline's again at the end, and a failed savepoint
        around it rolls its settings back too, so callers need not set the role again."""
        now = datetime.now(UTC)
        follow_ups: list[NewEvent] = []
        changes: list[ChangeEvent] = []
        for round_ in _rounds(events):
            for tenant_id, group in _by_tenant(round_).items():
                await as_app_for(conn, tenant_id)
                ctx = BatchContext(conn=conn, tenant_id=tenant_id, settings=self.settings, now=now)
                await self.pipeline.run(ctx, group)
                follow_ups.extend(ctx.follow_ups)
                changes.extend(ctx.changes)
        await as_pipeline(conn)
        if follow_ups:
            await store_log.append(conn, follow_ups, self.settings.partitions)
        if changes:
            # With the changes they describe, in this transaction: every tenant's in one statement.
            await store_changes.insert(conn, changes)
        await store_log.record_outcomes(
            conn,
            [e.event_id for e in events],
            [e.outcome or "applied" for e in events],
            [e.result for e in events],
            [e.error for e in events],
        )


class _Outcome:
    """What one transaction did, reported to metrics after it committed."""

    def __init__(self) -> None:
        self.applied: list[PipelineEvent] = []
        self.retried = 0
        self.dead_lettered = 0
        self.failures = 0  # events whose attempt failed (retried or dead-lettered)
        self.held: list[int] = []  # seqs moved past undecided (parked subject or lane)
        self.released: list[int] = []  # seqs held before, decided now
        self.side_changed = False  # parked subjects or lanes changed

    def done(self, events: list[PipelineEvent], *, from_held: bool) -> None:
        self.applied.extend(events)
        if from_held:
            self.released.extend(e.seq for e in events)

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.dead_lettered or self.held or self.released or self.side_changed)

    @property
    def moved(self) -> int:
        return len(self.applied) + self.dead_lettered + len(self.held)

    def observe(self) -> None:
        if self.applied:
            metrics.observe_batch(self.applied)
        if self.retried:
            metrics.RETRIED.inc(self.retried)
        if self.dead_lettered:
            metrics.DEAD_LETTERED.inc(self.dead_lettered)


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


def _copies(rows: list[dict[str, Any]]) -> list[PipelineEvent]:
    """Fresh events from rows read from the log: a failed attempt may have changed the events in hand
    (hooks may edit payloads), so each attempt works on its own copies."""
    return [PipelineEvent.from_row(copy.deepcopy(row)) for row in rows]
