"""Prometheus metrics of the scheduler, per process (served by whatever metrics listener the process has)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS = Counter("lily_scheduler_runs_total", "Job runs this process finished", ["job", "outcome"])
RUN_SECONDS = Histogram(
    "lily_scheduler_run_seconds",
    "Duration of the job runs this process finished",
    ["job"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
LEADER = Gauge("lily_scheduler_leader", "1 while this process leads the scheduler")
LEADERSHIPS = Counter("lily_scheduler_leadership_acquired_total", "Times this process became the scheduler leader")
