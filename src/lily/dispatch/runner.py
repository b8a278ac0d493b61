"""``lily dispatcher``: send deliveries until SIGTERM/SIGINT, then let attempts in flight finish."""

from __future__ import annotations

import asyncio
import signal

from lily.config import Settings
from lily.crypto import Keyring
from lily.dispatch.dispatcher import Dispatcher
from lily.plugins import load_plugins
from lily.store.db import Database
from lily.store.sealed import check_keys


async def run_standalone(database_url: str, settings: Settings) -> None:
    channels = load_plugins(settings).channels
    keyring = Keyring.from_settings(settings)
    db = Database(database_url, min_size=1, max_size=8, timeout=5, tenant_share=1.0)
    await db.open()
    try:
        await check_keys(db, keyring)  # a dispatcher that cannot open the channels' secrets must not start
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Dispatcher(db, settings, channels, keyring).run(stop)
    finally:
        await db.close()
