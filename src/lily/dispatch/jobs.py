"""The scheduled jobs of outbound delivery and secrets, registered as ``lily.jobs`` entry points."""

from __future__ import annotations

from typing import Any

from lily.crypto import Keyring
from lily.plugins.protocols import JobContext
from lily.store import notifications as store
from lily.store.db import as_pipeline
from lily.store.sealed import reseal_all

BATCH = 5000
MAX_ROWS_PER_RUN = 500_000


class PruneDeliveries:
    """Deletes finished deliveries (delivered or dead-lettered) and their attempts once they are
    ``LILY_DELIVERY_RETENTION_DAYS`` old."""

    name = "prune_deliveries"
    schedule = "*/10 * * * *"

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        age = ctx.settings.delivery_retention_days * 86_400
        total = 0
        while total < MAX_ROWS_PER_RUN:
            async with ctx.db.system() as conn:
                await as_pipeline(conn)
                deleted = await store.prune_deliveries(conn, age, BATCH)
            total += deleted
            if deleted < BATCH:
                break
        return {"deliveries": total}


class ResealSecrets:
    """After a key rotation (a new key first in ``LILY_SECRET_KEY``), re-seals every sealed secret with it,
    so the old key can then be dropped."""

    name = "reseal_secrets"
    schedule = "*/15 * * * *"

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        return await reseal_all(ctx.db, Keyring.from_settings(ctx.settings))
