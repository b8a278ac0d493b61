"""Starting workers: as tasks in the API process (``lily serve``) or alone (``lily worker``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from lily.config import Settings
from lily.heap import settle_after_startup
from lily.pipeline.stages import Pipeline
from lily.pipeline.worker import Worker
from lily.plugins import Plugins, load_plugins
from lily.store.db import Database

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings, plugins: Plugins | None = None) -> Pipeline:
    """The stages over the registry's handlers and enabled hooks (loaded here unless given)."""
    loaded = plugins if plugins is not None else load_plugins(settings)
    return Pipeline(handlers=loaded.handlers, hooks=loaded.hooks, classifiers=loaded.classifiers)


def start_workers(
    db: Database, settings: Settings, stop: asyncio.Event, *, count: int, plugins: Plugins | None = None
) -> list[asyncio.Task[None]]:
    pipeline = build_pipeline(settings, plugins)
    return [
        asyncio.create_task(
            Worker(db, settings, pipeline, name=f"worker-{os.getpid()}-{i}").run(stop), name=f"lily-worker-{i}"
        )
        for i in range(count)
    ]


async def run_standalone(database_url: str, settings: Settings, *, concurrency: int) -> None:
    """``lily worker``: consume until SIGTERM/SIGINT, then finish the batch in hand and exit."""
    plugins = load_plugins(settings)  # a bad plugin stops the worker before it touches the database
    db = Database(database_url, min_size=1, max_size=max(2, concurrency + 1))
    await db.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = start_workers(db, settings, stop, count=concurrency, plugins=plugins)
    settle_after_startup()
    log.info("worker %s consuming %s partitions", os.getpid(), settings.partitions)
    try:
        await asyncio.gather(*tasks)
    finally:
        await db.close()
