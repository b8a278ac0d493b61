"""The scheduled job that prunes change events by age (``LILY_CHANGE_EVENTS_RETENTION_DAYS``).

A feed reader or dispatcher further behind than the retention loses what was pruned: the retention is
how long a consumer may be away. Deliveries have their own job (``prune_deliveries``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lily.plugins.protocols import JobContext
from lily.store import changes as store
from lily.store.db import as_pipeline

BATCH = 5000
# A run stops after this many rows and leaves the rest to the next one, so it never holds the
# scheduler (or the table) for long after an outage piled rows up.
MAX_ROWS_PER_RUN = 500_000


class PruneChangeEvents:
    """Deletes change events of every tenant older than ``LILY_CHANGE_EVENTS_RETENTION_DAYS``."""

    name = "prune_change_events"
    schedule = "*/10 * * * *"

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        cutoff = ctx.scheduled_for - timedelta(days=ctx.settings.change_events_retention_days)
        total = 0
        while total < MAX_ROWS_PER_RUN:
            # A short transaction per batch: a long one would hold the feed's horizon back for everyone.
            async with ctx.db.system() as conn:
                await as_pipeline(conn)
                deleted = await store.prune(conn, cutoff, BATCH)
            total += deleted
            if deleted < BATCH:
                break
        return {"change_events": total, "older_than": cutoff.isoformat()}
