"""Starting the scheduler: as a task in the API process (``lily serve``) or alone (``lily scheduler``)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping

from lily.config import Settings
from lily.pipeline.metrics_listener import check_config, serve_metrics
from lily.plugins import load_plugins
from lily.plugins.protocols import ScheduledJob
from lily.scheduler.loop import Scheduler
from lily.store.db import Database

log = logging.getLogger(__name__)


def start_scheduler(
    db: Database, settings: Settings, jobs: Mapping[str, ScheduledJob], stop: asyncio.Event
) -> asyncio.Task[None]:
    """A scheduler task in this process; it ends (resigning leadership) once ``stop`` is set."""
    return asyncio.create_task(Scheduler(db, settings, jobs).run(stop), name="lily-scheduler")


async def run_standalone(database_url: str, settings: Settings) -> None:
    """``lily scheduler``: lead or follow until SIGTERM/SIGINT, then let runs in hand finish and exit."""
    jobs = load_plugins(settings).jobs
    check_config(settings)  # a metrics port without an operator token stops start-up, not the listener later
    db = Database(database_url, min_size=1, max_size=4)
    await db.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # This process's own counters (runs, leadership) at LILY_METRICS_PORT, if set; the deployment's
    # gauges are the API's to serve.
    listener = asyncio.create_task(serve_metrics(settings, stop), name="lily-metrics-listener")
    try:
        await Scheduler(db, settings, jobs).run(stop)
    finally:
        stop.set()
        await listener
        await db.close()
