"""Fixtures of the ops tests: an operator token, the fault-injection hooks, an outage of one database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from lily.config import Settings
from tests.pipeline.support import install_test_hooks

OPERATOR_TOKEN = "operator-" + "k" * 40


@pytest.fixture
def test_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from install_test_hooks(monkeypatch)


@pytest.fixture
def settings(settings: Settings, test_hooks: ModuleType) -> Settings:
    # The hook plugin must be on the path before the app loads its plugins.
    return settings.model_copy(update={"operator_token": SecretStr(OPERATOR_TOKEN)})


def operator_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@contextlib.contextmanager
def database_outage(pg_admin_url: str, database_url: str) -> Iterator[None]:
    """Make the test's database unreachable for the block: new connections refused, existing ones cut.

    To Lily this is what a dead server looks like (connections drop, reconnects fail), without stopping
    the server other tests share.
    """
    name = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
    try:
        yield
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
