"""Prometheus metrics of the pipeline (served at ``/metrics``)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import Counter, Histogram

from lily.pipeline.model import PipelineEvent

APPLIED = Counter("lily_events_applied_total", "Events applied", ["outcome"])
RETRIED = Counter("lily_events_retried_total", "Event attempts that failed transiently")
DEAD_LETTERED = Counter("lily_events_dead_lettered_total", "Events moved to the dead-letter queue")
LATENCY = Histogram(
    "lily_event_accept_to_apply_seconds",
    "Time from the log accepting an event to its effects committing",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH = Histogram("lily_pipeline_batch_size", "Events per applied batch", buckets=(1, 4, 16, 64, 256, 1024))


def observe_batch(events: list[PipelineEvent]) -> None:
    now = datetime.now(UTC)
    BATCH.observe(len(events))
    for event in events:
        APPLIED.labels(event.outcome or "applied").inc()
        LATENCY.observe((now - event.accepted_at).total_seconds())
