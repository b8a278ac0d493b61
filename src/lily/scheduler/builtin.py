"""Lily's own scheduled jobs, registered through the ``lily.jobs`` entry point like any plugin's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from lily.plugins.protocols import JobContext
from lily.store import jobs as store
from lily.store.db import Conn, as_pipeline

BATCH = 5000
# A run stops after this many rows per table and leaves the rest to the next run, so one run never
# holds the scheduler (or the database) for long after a long outage piled rows up.
MAX_ROWS_PER_RUN = 500_000


class PruneExpired:
    """Deletes what has expired, across every tenant: revocations of tokens past their expiry,
    idempotency keys older than ``LILY_IDEMPOTENCY_KEY_TTL_SECONDS`` and finished job runs older than
    ``LILY_JOB_RUNS_RETENTION_DAYS``."""

    name = "prune_expired"
    schedule = "*/10 * * * *"

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        settings = ctx.settings
        runs_age = settings.job_runs_retention_days * 86_400
        return {
            "revoked_tokens": await _in_batches(ctx, lambda conn: store.prune_revoked_tokens(conn, BATCH)),
            "idempotency_keys": await _in_batches(
                ctx, lambda conn: store.prune_idempotency_keys(conn, settings.idempotency_key_ttl_seconds, BATCH)
            ),
            "job_runs": await _in_batches(ctx, lambda conn: store.prune_job_runs(conn, runs_age, BATCH)),
        }


async def _in_batches(ctx: JobContext, delete: Callable[[Conn], Awaitable[int]]) -> int:
    """Delete batch after batch, each in its own short transaction, until a batch comes back short."""
    total = 0
    while total < MAX_ROWS_PER_RUN:
        async with ctx.db.system() as conn:
            await as_pipeline(conn)
            deleted = await delete(conn)
        total += deleted
        if deleted < BATCH:
            break
    return total
