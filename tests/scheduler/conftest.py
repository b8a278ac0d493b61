"""Scheduler tests: quick polling, an operator token, and jobs the tests control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from lily.config import Settings
from lily.plugins.protocols import JobContext
from lily.scheduler.loop import Scheduler
from lily.store.db import Database

JOB_PLUGINS = Path(__file__).resolve().parents[1] / "plugins" / "jobs"
OPERATOR_TOKEN = "operator-" + "o" * 40


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"scheduler_poll_seconds": 0.05, "operator_token": SecretStr(OPERATOR_TOKEN)})


class Recorder:
    """A job that records what it was given; ``fail`` makes it raise, ``gate`` makes it wait."""

    def __init__(self, name: str = "rec", schedule: str = "every 60s") -> None:
        self.name = name
        self.schedule = schedule
        self.calls: list[JobContext] = []
        self.fail: str | None = None
        self.returns: Any = None
        self.gate: asyncio.Event | None = None

    async def run(self, ctx: JobContext) -> Any:
        self.calls.append(ctx)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError(self.fail)
        return self.returns if self.returns is not None else {"n": len(self.calls)}


@pytest.fixture
def schedulers(db: Database, settings: Settings) -> Any:
    """Make schedulers over ``db``; every one made is stopped (runs finished, lock given up) at the end."""
    made: list[Scheduler] = []

    def make(*jobs: Any, node: str | None = None) -> Scheduler:
        scheduler = Scheduler(db, settings, {job.name: job for job in jobs}, node=node)
        made.append(scheduler)
        return scheduler

    return make, made


@pytest.fixture
async def make_scheduler(schedulers: Any) -> AsyncIterator[Any]:
    make, made = schedulers
    yield make
    for scheduler in made:
        for task in list(scheduler.in_hand.values()):
            task.cancel()
        await asyncio.gather(*scheduler.in_hand.values(), return_exceptions=True)
        await scheduler.leadership.resign()
