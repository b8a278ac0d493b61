"""The in-process credential cache across real API processes: a revocation, a disabling or a role change
made through one process applies to the very next request in another, which has the credential cached.

``lily api --workers 2`` (A: a main process and a helper on one port) and ``lily api --workers 1`` (B, so
which process answers a request to B is certain) on one test database. Warming a credential in B and in
A's processes, then changing it through A, must refuse (or re-role) it on the next request to B.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from lily import admin
from lily.store.db import Database
from tests.conftest import TEST_PARTITIONS, with_dbname

PASSWORD = "a-long-enough-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # a poll interval


def _run(coro: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Api:
    base: str
    proc: subprocess.Popen[bytes]


@dataclass
class Live:
    a: Api
    b: Api
    database_url: str
    env: dict[str, str]


def _start(env: dict[str, str], *args: str) -> Api:
    port = _free_port()
    cmd = [sys.executable, "-c", "from lily.cli import main; main()", "api", "--port", str(port), *args]
    api = Api(f"http://127.0.0.1:{port}/lily/v1", subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))

    def up() -> bool:
        assert api.proc.poll() is None, "the API process exited"
        try:
            return httpx.get(api.base + "/system/health", timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    _until(up, 120, "the API to start")
    return api


def _stop(api: Api) -> None:
    api.proc.terminate()
    try:
        api.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        api.proc.kill()


@pytest.fixture(scope="module")
def live(pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    name = f"lily_authcache_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY FILE_COPY")  # type: ignore[arg-type]
    database_url = with_dbname(pg_admin_url, name)
    home: Path = tmp_path_factory.mktemp("lily-authcache")
    env = {
        **os.environ,
        "LILY_DATABASE_URL": database_url,
        "LILY_HOME": str(home),
        "LILY_JWT_SECRET": "test-secret-" + "x" * 32,
        "LILY_LOG_LEVEL": "WARNING",
        "LILY_POOL_MAX_SIZE": "4",
        "LILY_PARTITIONS": str(TEST_PARTITIONS),
    }
    started: list[Api] = []
    try:
        # A: a main process and one helper (the last test kills the helper); B: one process, so a
        # request to B certainly meets B's cache.
        started.append(_start(env, "--workers", "2"))
        started.append(_start(env, "--workers", "1"))
        yield Live(started[0], started[1], database_url, env)
    finally:
        for api in started:
            _stop(api)
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


async def _setup(database_url: str, tenant: str) -> dict[str, str]:
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        await admin.create_tenant(db, tenant)
        keys = {role: await admin.create_api_key(db, tenant, role, role) for role in ("admin", "viewer")}
        await admin.create_user(db, tenant, "ann", PASSWORD, "admin")
        await admin.create_user(db, tenant, "cat", PASSWORD, "admin")  # so ann is not the last admin
        await admin.create_user(db, tenant, "bob", PASSWORD, "viewer")
        return keys
    finally:
        await db.close()


def _tenant(live: Live) -> tuple[str, dict[str, str]]:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    return tenant, _run(_setup(live.database_url, tenant))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _login(api: Api, tenant: str, username: str) -> str:
    r = httpx.post(f"{api.base}/auth/login", json={"tenant_id": tenant, "username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def _validate(api: Api, token: str) -> httpx.Response:
    return httpx.get(f"{api.base}/auth/validate", headers=_bearer(token))


def _warm(live: Live, token: str) -> None:
    """Each process checks the credential in full once, then answers it from its cache."""
    for api in (live.a, live.b, live.a, live.b):
        r = _validate(api, token)
        assert r.status_code == 200, r.text


def test_a_revoked_key_is_refused_by_the_next_request_in_the_other_process(live: Live) -> None:
    tenant, keys = _tenant(live)
    _warm(live, keys["viewer"])
    key_id = keys["viewer"].split(".")[1]
    r = httpx.delete(f"{live.a.base}/tenants/{tenant}/api-keys/{key_id}", headers=_bearer(keys["admin"]))
    assert r.status_code == 204, r.text
    assert _validate(live.b, keys["viewer"]).status_code == 401
    assert _validate(live.a, keys["viewer"]).status_code == 401
    # Other credentials of the tenant are checked anew once, and still pass.
    assert _validate(live.b, keys["admin"]).status_code == 200


def test_a_disabled_user_is_refused_by_the_next_request_in_the_other_process(live: Live) -> None:
    tenant, keys = _tenant(live)
    token = _login(live.a, tenant, "bob")
    _warm(live, token)
    r = httpx.patch(
        f"{live.a.base}/tenants/{tenant}/users/bob", json={"disabled": True}, headers=_bearer(keys["admin"])
    )
    assert r.status_code == 200, r.text
    refused = _validate(live.b, token)
    assert refused.status_code == 401 and refused.json()["detail"] == "user disabled"


def test_a_role_change_applies_to_the_next_request_in_the_other_process(live: Live) -> None:
    tenant, keys = _tenant(live)
    token = _login(live.a, tenant, "ann")
    _warm(live, token)
    users = f"/tenants/{tenant}/users"
    assert httpx.get(live.b.base + users, headers=_bearer(token)).status_code == 200
    r = httpx.patch(f"{live.a.base}{users}/ann", json={"role": "viewer"}, headers=_bearer(keys["admin"]))
    assert r.status_code == 200, r.text
    assert httpx.get(live.b.base + users, headers=_bearer(token)).status_code == 403
    assert _validate(live.b, token).json()["claims"]["roles"] == ["viewer"]


def test_a_logout_applies_to_the_next_request_in_the_other_process(live: Live) -> None:
    tenant, _ = _tenant(live)
    token = _login(live.a, tenant, "bob")
    _warm(live, token)
    assert httpx.post(f"{live.a.base}/auth/logout", headers=_bearer(token)).status_code == 204
    assert _validate(live.b, token).status_code == 401


def test_a_change_made_in_sql_outside_the_api_applies_too(live: Live) -> None:
    """The epoch moves in a trigger, so an operator's direct UPDATE is seen like an API change."""
    tenant, keys = _tenant(live)
    _warm(live, keys["viewer"])
    with psycopg.connect(live.database_url, autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET role = 'admin' WHERE tenant_id = %s AND name = 'viewer'", [tenant])
    assert _validate(live.b, keys["viewer"]).json()["claims"]["roles"] == ["admin"]


def test_a_revoked_key_is_refused_by_the_next_point_read_in_the_other_process(live: Live) -> None:
    """GET /metadata/{id} checks a cached credential inside its one read round trip (lily.api.deps.Reading)."""
    tenant, keys = _tenant(live)
    path = "/metadata/00000000-0000-4000-8000-000000000000"  # missing: 404 while the key is good
    for api in (live.a, live.b, live.a, live.b):
        assert httpx.get(api.base + path, headers=_bearer(keys["viewer"])).status_code == 404
    key_id = keys["viewer"].split(".")[1]
    r = httpx.delete(f"{live.a.base}/tenants/{tenant}/api-keys/{key_id}", headers=_bearer(keys["admin"]))
    assert r.status_code == 204, r.text
    assert httpx.get(live.b.base + path, headers=_bearer(keys["viewer"])).status_code == 401
    assert httpx.get(live.a.base + path, headers=_bearer(keys["viewer"])).status_code == 401


def test_helpers_serve_the_same_port_and_are_restarted(live: Live) -> None:
    """Last in this module: it kills A's helper."""
    _, keys = _tenant(live)
    api = live.a
    port = int(api.base.split(":")[2].split("/")[0])
    parent = psutil.Process(api.proc.pid)

    def helpers() -> list[psutil.Process]:
        found = []
        for p in parent.children():
            try:
                if "api-process" in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:  # a killed helper not reaped yet
                continue
        return found

    _until(lambda: len(helpers()) == 1, 60, "one helper process")
    first = helpers()[0]
    listening = [c.laddr.port for c in first.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    assert listening == [port]
    first.kill()
    _until(lambda: [p.pid for p in helpers()] not in ([], [first.pid]), 60, "a new helper")
    for _ in range(4):
        assert _validate(api, keys["viewer"]).status_code == 200
    second = helpers()[0]
    _stop(api)
    assert api.proc.returncode == 0
    _until(lambda: not second.is_running() or second.status() == psutil.STATUS_ZOMBIE, 10, "the helper to exit")
