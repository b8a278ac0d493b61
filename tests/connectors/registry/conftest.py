"""Fixtures of the connector registry tests: a source database on the test PostgreSQL server, private
targets allowed (the source is on loopback), and helpers that run due connectors and wait for the log."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from lily.config import Settings
from lily.scheduler.connectors import ConnectorPolls
from lily.store.db import Database
from tests.conftest import with_dbname


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"allow_private_targets": True, "connector_retry_base_seconds": 0.2, "connector_retry_max_seconds": 1}
    )


@dataclass
class Source:
    """A PostgreSQL database the test crawls, with a login role that has a password."""

    url: str  # as the owner (postgres), for changing the source
    host: str
    port: int
    database: str
    user: str
    password: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def execute(self, sql: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql)


@pytest.fixture
def source_pg(source_server_url: str) -> Iterator[Source]:
    pg_admin_url = source_server_url
    suffix = uuid.uuid4().hex[:8]
    name, user, password = f"src_{suffix}", f"crawler_{suffix}", f"pw-{uuid.uuid4().hex}"
    params = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
    host = str(params.get("host") or "127.0.0.1")
    port = int(str(params.get("port") or 5432))
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    url = with_dbname(pg_admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {user}")
    yield Source(url, host, port, name, user, password)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"DROP ROLE IF EXISTS {user}")


@pytest.fixture
def polls() -> ConnectorPolls:
    return ConnectorPolls()


async def run_due(app: Any, polls: ConnectorPolls) -> int:
    """Start every due run and queued request, and wait for them to end."""
    runtime = app.state.runtime
    return await polls.start_due(runtime.db, runtime.settings, wait=True)


async def settle(db: Database, tenant_id: str, timeout: float = 30.0) -> None:
    """Wait until the pipeline has decided every event of the tenant."""
    deadline = time.monotonic() + timeout
    while True:
        async with db.tenant(tenant_id) as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM events WHERE status = 'accepted'")
            row = await cur.fetchone()
        if row is not None and row["n"] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{row} events still waiting after {timeout} s")
        await asyncio.sleep(0.05)


async def crawl(client: Any, app: Any, polls: ConnectorPolls, tenant: Any, connector_id: str) -> dict[str, Any]:
    """Run the connector now, wait for the run and for its events to be applied; the run."""
    r = await client.post(f"/connectors/{tenant.tenant_id}/{connector_id}/run", headers=tenant.headers())
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    assert await run_due(app, polls) >= 1
    await settle(app.state.runtime.db, tenant.tenant_id)
    r = await client.get(f"/connectors/{tenant.tenant_id}/{connector_id}/runs/{run_id}", headers=tenant.headers())
    assert r.status_code == 200, r.text
    run: dict[str, Any] = r.json()
    assert run["state"] in ("succeeded", "failed"), run
    return run


@pytest.fixture
async def registered(client: Any, tenant: Any) -> AsyncIterator[Any]:
    async def register(type_: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body = {"name": extra.pop("name", f"{type_}-{uuid.uuid4().hex[:6]}"), "type": type_, "config": config, **extra}
        r = await client.post(f"/connectors/{tenant.tenant_id}", json=body, headers=tenant.headers())
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    yield register
