"""The scheduler loop: while this process leads, start every job's due run and every run-now request.

Each round (every poll interval, sooner when a job falls due), the leader confirms its leadership and
reads the database's clock, then for each job whose run is not already in hand computes the latest due
time at or before now. If that time is at or after the job's anchor (its first sighting) it inserts the
run, already 'running', before any work starts; the unique ``(job, scheduled_for)`` key makes that
insert the claim, so a due time runs at most once whichever process leads. Due times missed while no
leader ran are not replayed one by one: only the latest is, once, on takeover.

A job has at most one run in hand per process: if a run outlasts its interval, the due times it
overlapped are skipped and the latest one runs when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from lily.config import Settings
from lily.domain.errors import ServiceUnavailable
from lily.plugins.protocols import JobContext, ScheduledJob
from lily.scheduler import metrics
from lily.scheduler.leader import Leadership, node_name
from lily.scheduler.schedule import Schedule, ScheduleError, parse
from lily.store import jobs as store
from lily.store.db import Database, as_pipeline

log = logging.getLogger(__name__)

# On shutdown, runs in hand get this long to finish before they are cancelled (and recorded as such).
SHUTDOWN_GRACE_SECONDS = 5.0
MAX_ERROR_CHARS = 4000


def schedules(jobs: Mapping[str, ScheduledJob]) -> dict[str, Schedule]:
    """Each job's parsed schedule; a bad one stops start-up with a message naming the job."""
    parsed = {}
    for name, job in jobs.items():
        try:
            parsed[name] = parse(job.schedule)
        except ScheduleError as exc:
            raise ScheduleError(f"job plugin {name!r} has an unusable schedule: {exc}") from exc
    return parsed


class Scheduler:
    def __init__(
        self, db: Database, settings: Settings, jobs: Mapping[str, ScheduledJob], *, node: str | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.jobs = dict(jobs)
        self.schedules = schedules(self.jobs)
        self.node = node or node_name()
        self.poll_seconds = settings.scheduler_poll_seconds
        self.leadership = Leadership(db.url, self.node, poll_seconds=self.poll_seconds)
        self.shutdown_grace_seconds = SHUTDOWN_GRACE_SECONDS
        self.in_hand: dict[str, asyncio.Task[None]] = {}
        self.run_ids: dict[str, UUID] = {}  # job → the run in hand
        self._failing = False
        self._anchors: dict[str, datetime] | None = None  # set once per leadership
        self._claimed: dict[str, datetime] = {}  # the last due time this process tried per job

    async def run(self, stop: asyncio.Event) -> None:
        """Lead or follow until ``stop`` is set; then let runs in hand finish (briefly) and resign."""
        log.info("scheduler %s started with jobs: %s", self.node, ", ".join(sorted(self.jobs)) or "none")
        try:
            while not stop.is_set():
                try:
                    delay = await self.tick()
                    if self._failing:
                        log.info("scheduler %s: rounds succeed again", self.node)
                    self._failing = False
                except (ServiceUnavailable, psycopg.OperationalError) as exc:
                    # The database is away: say so once, not every interval, and keep trying.
                    if not self._failing:
                        log.warning("scheduler %s: database unavailable, retrying: %s", self.node, exc)
                    self._failing = True
                    delay = self.poll_seconds
                except Exception:
                    # Any other failed round must not end the scheduler either.
                    log.exception("scheduler round failed")
                    delay = self.poll_seconds
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        finally:
            await self._finish_in_hand()
            await self.leadership.resign()
            log.info("scheduler %s stopped", self.node)

    async def tick(self, *, now: datetime | None = None) -> float:
        """One round; returns how long to wait before the next. ``now`` overrides the clock (tests)."""
        db_now = await self.leadership.check()
        if db_now is None:
            self._anchors = None
            return self.poll_seconds
        now = now or db_now
        async with self.db.system() as conn:
            await as_pipeline(conn)
            if self._anchors is None:
                self._anchors = await store.register_jobs(conn, [(n, s.text) for n, s in self.schedules.items()])
                abandoned = await store.abandon_runs(conn, list(self.run_ids.values()))
                if abandoned:
                    log.warning("closed %s run(s) left running by a previous leader", abandoned)
            due_runs, tried = await self._claim_due(conn, now)
            free = [name for name in self.jobs if name not in self.in_hand and name not in due_runs]
            requested = await store.claim_requested(conn, free, self.node)
        # Only once the claims committed: a round that failed before its commit is tried again.
        self._claimed.update(tried)
        for run in [*due_runs.values(), *requested]:
            self._start(run)
        return self._delay(now)

    async def _claim_due(self, conn: Any, now: datetime) -> tuple[dict[str, dict[str, Any]], dict[str, datetime]]:
        """The runs this round claimed, and every due time it tried (claimed here or already elsewhere)."""
        assert self._anchors is not None
        claimed: dict[str, dict[str, Any]] = {}
        tried: dict[str, datetime] = {}
        for name, schedule in self.schedules.items():
            if name in self.in_hand:
                continue
            due = schedule.latest_due(now)
            anchor = self._anchors.get(name)
            if anchor is None or due < anchor or self._claimed.get(name) == due:
                continue
            run = await store.claim_due(conn, name, due, self.node)
            tried[name] = due
            if run is not None:
                claimed[name] = run
        return claimed, tried

    def _delay(self, now: datetime) -> float:
        soonest = min((s.next_due(now) for s in self.schedules.values()), default=now + timedelta(days=1))
        return min(self.poll_seconds, max(0.01, (soonest - now).total_seconds()))

    def _start(self, run: dict[str, Any]) -> None:
        name = run["job"]
        self.run_ids[name] = run["run_id"]
        self.in_hand[name] = asyncio.create_task(self._execute(self.jobs[name], run), name=f"lily-job-{name}")

    async def _execute(self, job: ScheduledJob, run: dict[str, Any]) -> None:
        run_id: UUID = run["run_id"]
        started = time.monotonic()
        ctx = JobContext(db=self.db, settings=self.settings, scheduled_for=run["scheduled_for"], run_id=str(run_id))
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            try:
                returned = await job.run(ctx)
                if returned is not None and not isinstance(returned, dict):
                    raise TypeError(f"run() returned {type(returned).__name__}, not a dict or None")
                result = returned
            except asyncio.CancelledError:
                error = "cancelled: the scheduler stopped before the run finished"
                raise
            except Exception as exc:
                log.exception("job %s (run %s) failed", job.name, run_id)
                error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        finally:
            outcome = "failed" if error else "succeeded"
            metrics.RUNS.labels(job.name, outcome).inc()
            metrics.RUN_SECONDS.labels(job.name).observe(time.monotonic() - started)
            # Shielded: a run cancelled at shutdown still gets its outcome written.
            await asyncio.shield(self._record(run_id, error, result))
            self.in_hand.pop(job.name, None)
            self.run_ids.pop(job.name, None)

    async def _record(self, run_id: UUID, error: str | None, result: dict[str, Any] | None) -> None:
        for attempt in range(3):
            try:
                async with self.db.system() as conn:
                    await as_pipeline(conn)
                    await store.finish_run(conn, run_id, succeeded=error is None, error=error, result=result)
                return
            except Exception:
                if attempt == 2:
                    log.exception("could not record the outcome of run %s", run_id)
                else:
                    await asyncio.sleep(0.5 * (attempt + 1))

    async def _finish_in_hand(self) -> None:
        tasks = list(self.in_hand.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
