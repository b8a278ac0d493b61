"""Prometheus metrics: the deployment's view for operators, and one tenant's view for its admins.

Counters and histograms are per process (each worker counts what it applied) and are not labelled by
tenant: a label per tenant multiplies every series (13 latency buckets, outcomes, processes) by the
number of tenants, which Prometheus handles badly past a few thousand. So they are operator-only.

What a tenant admin sees is read from the database at scrape time, scoped by row-level security:
its events waiting per partition, those of them that already failed an attempt, and its open dead
letters. They are facts of the database, not of a process, so any API process reports the same.
The operator view has the same gauges over all tenants, plus the process's own figures.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from lily.domain.errors import ServiceUnavailable
from lily.pipeline.model import PipelineEvent
from lily.store import log as store_log
from lily.store import system as store_system
from lily.store.db import Database, as_pipeline

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

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
DATABASE_UP = Gauge("lily_database_up", "1 while this process reaches the database, 0 during an outage")
DATABASE_OUTAGES = Gauge("lily_database_outages", "Database outages this process has seen since it started")


def observe_batch(events: list[PipelineEvent]) -> None:
    now = datetime.now(UTC)
    BATCH.observe(len(events))
    for event in events:
        APPLIED.labels(event.outcome or "applied").inc()
        LATENCY.observe((now - event.accepted_at).total_seconds())


async def refresh(db: Database) -> None:
    """Set the deployment-wide gauges from the database (called before the operator view renders)."""
    DATABASE_OUTAGES.set(db.breaker.outages)
    try:
        async with db.system() as conn:
            lags = await store_log.lag(conn)
            await as_pipeline(conn)
            dead = await store_log.open_dead_letters(conn)
    except ServiceUnavailable:
        # The process figures are still worth a scrape; the database gauges keep their last values.
        DATABASE_UP.set(0)
        return
    DATABASE_UP.set(1)
    for row in lags:
        BACKLOG.labels(str(row["partition"])).set(int(row["lag"]))
        IN_RETRY.labels(str(row["partition"])).set(1 if row["retry_at"] is not None else 0)
    DEAD_LETTERS.set(dead)


async def render_system(db: Database | None) -> bytes:
    """The operator view: every tenant's gauges and this process's counters, histograms and runtime."""
    if db is not None:
        await refresh(db)
    return generate_latest(REGISTRY)


async def render_tenant(db: Database, tenant_id: str) -> bytes:
    """One tenant's view, built in a registry of its own so nothing of the process or other tenants leaks."""
    async with db.tenant(tenant_id) as conn:
        backlog = await store_system.tenant_backlog(conn, tenant_id)
        dead = await store_system.tenant_dead_letters_open(conn, tenant_id)
    registry = CollectorRegistry(auto_describe=False)
    waiting = Gauge(
        "lily_log_backlog",
        "This tenant's events accepted but not yet applied, per partition",
        ["partition"],
        registry=registry,
    )
    retrying = Gauge(
        "lily_log_events_in_retry",
        "This tenant's events waiting to be applied that have already failed an attempt, per partition",
        ["partition"],
        registry=registry,
    )
    for row in backlog:
        waiting.labels(str(row["partition"])).set(int(row["backlog"]))
        retrying.labels(str(row["partition"])).set(int(row["retrying"]))
    Gauge(
        "lily_dead_letters_open", "This tenant's dead-lettered events awaiting replay or discard", registry=registry
    ).set(dead)
    return generate_latest(registry)
