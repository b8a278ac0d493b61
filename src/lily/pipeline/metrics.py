"""Prometheus metrics of the pipeline (served at ``/metrics``).

Counters and histograms are per process (each worker counts what it applied). The log's backlog and
the dead-letter count are facts of the database, not of a process: :func:`refresh` reads them at
scrape time, so any API process reports the same, whichever process did the work.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram

from lily.pipeline.model import PipelineEvent
from lily.store import log as store_log
from lily.store.db import Database, as_pipeline

APPLIED = Counter("lily_events_applied_total", "Events applied", ["outcome"])
RETRIED = Counter("lily_events_retried_total", "Event attempts that failed transiently")
DEAD_LETTERED = Counter("lily_events_dead_lettered_total", "Events moved to the dead-letter queue")
LATENCY = Histogram(
    "lily_event_accept_to_apply_seconds",
    "Time from the log accepting an event to its effects committing",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BACKLOG = Gauge("lily_log_backlog", "Events accepted but not yet applied, per partition", ["partition"])
IN_RETRY = Gauge("lily_log_partition_in_retry", "1 while a partition waits to retry a failed event", ["partition"])
DEAD_LETTERS = Gauge("lily_dead_letters_open", "Dead-lettered events awaiting replay or discard (all tenants)")
BATCH = Histogram("lily_pipeline_batch_size", "Events per applied batch", buckets=(1, 4, 16, 64, 256, 1024))


def observe_batch(events: list[PipelineEvent]) -> None:
    now = datetime.now(UTC)
    BATCH.observe(len(events))
    for event in events:
        APPLIED.labels(event.outcome or "applied").inc()
        LATENCY.observe((now - event.accepted_at).total_seconds())


async def refresh(db: Database) -> None:
    """Set the gauges from the database (called by the metrics endpoint before it renders)."""
    async with db.system() as conn:
        lags = await store_log.lag(conn)
        await as_pipeline(conn)
        dead = await store_log.open_dead_letters(conn)
    for row in lags:
        BACKLOG.labels(str(row["partition"])).set(int(row["lag"]))
        IN_RETRY.labels(str(row["partition"])).set(1 if row["retry_at"] is not None else 0)
    DEAD_LETTERS.set(dead)
