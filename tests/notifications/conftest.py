"""Fixtures: an app with a dispatcher inside, private targets allowed (receivers run on loopback), a
compressed retry schedule and short timeouts and leases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lily.api.app import create_app
from lily.config import Settings
from tests.conftest import TEST_PARTITIONS

SECRET_KEY = "q1mP8U9HkTTMfbQ2rU4cWz0b6sQx3oB5s0mJv5Hh0vY="


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        home=tmp_path,
        jwt_secret="test-secret-" + "x" * 32,
        partitions=TEST_PARTITIONS,
        write_wait_seconds=10.0,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
        max_attempts=3,
        pool_min_size=1,
        pool_max_size=8,
        secret_key=SECRET_KEY,
        allow_private_targets=True,
        delivery_retry_schedule="0,0.2,0.2,0.2",
        delivery_timeout_seconds=1.0,
        delivery_lease_seconds=3.0,
        scheduler_in_serve=False,
    )


@pytest.fixture
async def app(settings: Settings, database_url: str) -> AsyncIterator[Any]:
    application = create_app(settings, database_url, run_workers=True, run_dispatcher=True)
    async with application.router.lifespan_context(application):
        yield application
