"""Fixtures of the API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lily.api.app import create_app
from lily.config import Settings


@pytest.fixture
async def second_app(settings: Settings, database_url: str) -> AsyncIterator[Any]:
    """Another API process on the same database: its own pool and runtime, nothing shared in memory."""
    other = create_app(settings, database_url, run_workers=False)
    async with other.router.lifespan_context(other):
        yield other


@pytest.fixture
async def second_process(second_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=second_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as c:
        yield c
