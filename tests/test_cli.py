"""The real ``lily`` command, run as a subprocess against the test database."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from lily import admin
from lily.domain.errors import Invalid, NotFound
from lily.store.migrate import available
from tests.conftest import TEST_PARTITIONS


def lily_command() -> list[str]:
    script = Path(sys.executable).parent / "lily"
    if script.exists():
        return [str(script)]
    found = shutil.which("lily")
    assert found, "the lily command is not installed (pip install -e .)"
    return [found]


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LILY_DATABASE_URL": database_url,
        "LILY_HOME": str(tmp_path / "home"),
        "LILY_PARTITIONS": str(TEST_PARTITIONS),
        "LILY_LOG_LEVEL": "WARNING",
    }


def lily(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*lily_command(), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


async def test_admin_commands(env: dict[str, str], client: httpx.AsyncClient) -> None:
    r = lily(env, "admin", "create-tenant", "initech", "--name", "Initech")
    assert r.returncode == 0, r.stderr
    assert "initech" in r.stdout
    r = lily(
        env,
        "admin",
        "create-user",
        "initech",
        "alice",
        "--role",
        "editor",
        "--password-stdin",
        stdin="a-long-password\n",
    )
    assert r.returncode == 0, r.stderr
    assert "a-long-password" not in r.stdout + r.stderr
    r = lily(env, "admin", "create-api-key", "initech", "ci", "--role", "admin")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("lily_initech.") and "\n" not in key

    # The printed key and the user's password both authenticate against the API.
    v = await client.get("/auth/validate", headers={"Authorization": f"Bearer {key}"})
    assert v.status_code == 200, v.text
    assert v.json()["claims"]["tenant_id"] == "initech" and v.json()["claims"]["roles"] == ["admin"]
    login = await client.post(
        "/auth/login", json={"tenant_id": "initech", "username": "alice", "password": "a-long-password"}
    )
    assert login.status_code == 200, login.text
    config = await client.get("/tenants/initech/config", headers={"Authorization": f"Bearer {key}"})
    assert config.json()["name"] == "Initech"

    # Refusals exit non-zero with a message on stderr, and create nothing. They are independent: run at once.
    refusals = [
        (("admin", "create-api-key", "initech", "k", "--role", "root"), None),
        (("admin", "create-user", "initech", "bob", "--role", "owner", "--password-stdin"), "a-long-password\n"),
        (("admin", "create-tenant", "initech"), None),  # exists already
        (("admin", "create-tenant", "Not_Valid!"), None),
        (("admin", "create-user", "initech", "alice", "--role", "viewer", "--password-stdin"), "another-password\n"),
        (("admin", "create-user", "initech", "carol", "--role", "viewer", "--password-stdin"), "short\n"),
        (("admin", "create-api-key", "nope", "k", "--role", "viewer"), None),
    ]
    procs = [
        subprocess.Popen(
            [*lily_command(), *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _ in refusals
    ]
    for (args, stdin), proc in zip(refusals, procs, strict=True):
        out, err = proc.communicate(stdin, timeout=60)
        assert proc.returncode != 0, (args, out)
        assert err.strip(), args
        assert "Traceback" not in err, err
    sources = await client.get("/tenants/initech/sources", headers={"Authorization": f"Bearer {key}"})
    assert [s["name"] for s in sources.json()["inbound"]] == ["ci"]
    login = await client.post(
        "/auth/login", json={"tenant_id": "initech", "username": "alice", "password": "another-password"}
    )
    assert login.status_code == 401


def test_migrate_is_idempotent(env: dict[str, str], database_url: str) -> None:
    latest = max(number for number, _, _ in available())
    with psycopg.connect(database_url) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version").fetchall()
    for _ in range(2):
        r = lily(env, "migrate")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"schema at version {latest}"
    with psycopg.connect(database_url) as conn:
        after = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version").fetchall()
    assert after == before and len(after) == len(available())


def test_migrate_refuses_another_partition_count(env: dict[str, str]) -> None:
    r = lily({**env, "LILY_PARTITIONS": str(TEST_PARTITIONS * 2)}, "migrate")
    assert r.returncode != 0
    assert "LILY_PARTITIONS" in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_healthy(base: str, proc: subprocess.Popen[Any], deadline_seconds: float = 60) -> dict[str, Any]:
    """Poll the readiness endpoint until it answers 200; fail if the server exits or the deadline passes."""
    deadline = time.monotonic() + deadline_seconds
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"lily serve exited with {proc.returncode}"
            try:
                r = http.get(f"{base}/system/health")
                if r.status_code == 200:
                    body: dict[str, Any] = r.json()
                    return body
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # between polls of the readiness endpoint, not as synchronisation
    raise AssertionError("lily serve did not become healthy in time")


def start_serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [*lily_command(), "serve", "--port", str(port)],
        # The pipeline process starts beside the API processes and may still be importing when the health
        # probe first answers; on a loaded 2-core CI machine that can outlast a write's 5 s wait. These
        # tests are about serving, not about how fast that process starts, so a write may wait longer.
        env={"LILY_WRITE_WAIT_SECONDS": "60", **env, "LILY_LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}/lily/v1"


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output


def test_serve_really_serves(env: dict[str, str]) -> None:
    assert lily(env, "admin", "create-tenant", "acme").returncode == 0
    key = lily(env, "admin", "create-api-key", "acme", "ci", "--role", "editor").stdout.strip()
    assert key.startswith("lily_acme.")
    operator = "operator-" + "o" * 32
    proc, base = start_serve({**env, "LILY_OPERATOR_TOKEN": operator})
    try:
        assert wait_until_healthy(base, proc) == {"status": "ok"}  # the public probe says no more
        details = httpx.get(
            f"{base}/system/health/details", headers={"Authorization": f"Bearer {operator}"}, timeout=10
        ).json()
        assert details["status"] == "ok" and details["schema_version"] == max(n for n, _, _ in available())
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {key}"}) as http:
            r = http.post(f"{base}/metadata", json={"qualified_name": "pg://db/s.t", "type": "table"})
            assert r.status_code == 201, r.text
            r = http.get(f"{base}/metadata/{r.json()['asset_id']}")
            assert r.status_code == 200 and r.json()["version"] == 1
            # Over a real socket, a chunked body over the limit is refused too.
            chunks = (b"x" * 65536 for _ in range(20))
            r = http.post(f"{base}/metadata", content=chunks, headers={"content-type": "application/json"})
            assert r.status_code == 413, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert http.get(base.removesuffix("/lily/v1") + "/openapi.json").status_code == 200
    finally:
        output = stop(proc)
    # SIGTERM is a clean shutdown: exit status 0, after the app's shutdown ran.
    assert proc.returncode == 0, output
    assert "Application shutdown complete" in output, output


def embedded_postmasters(home: Path) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout  # -ww: never cut
    return [line for line in ps.splitlines() if "postgres" in line and f"-D {home}/pgdata" in line]


def test_serve_with_the_embedded_server_keeps_data_and_stops_it(env: dict[str, str], server_home: Path) -> None:
    home = server_home / "embedded-home"
    embedded = {k: v for k, v in env.items() if k != "LILY_DATABASE_URL"} | {"LILY_HOME": str(home)}
    proc, base = start_serve(embedded)
    try:
        wait_until_healthy(base, proc)
        # Admin commands join the running embedded server through LILY_HOME.
        assert lily(embedded, "admin", "create-tenant", "acme").returncode == 0
        key = lily(embedded, "admin", "create-api-key", "acme", "ci", "--role", "editor").stdout.strip()
        r = httpx.post(
            f"{base}/metadata",
            json={"qualified_name": "pg://db/s.kept", "type": "table"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
    assert embedded_postmasters(home) == [], "lily serve left its embedded PostgreSQL running"
    # A restart finds the data where it was left.
    proc, base = start_serve(embedded)
    try:
        wait_until_healthy(base, proc)
        r = httpx.get(f"{base}/metadata/{asset_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 200 and r.json()["qualified_name"] == "pg://db/s.kept"
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
    assert embedded_postmasters(home) == []


async def test_admin_operations_refuse_bad_names(db: Any) -> None:
    """What the CLI passes through: bad ids and names are refused before they reach the database."""
    await admin.create_tenant(db, "acme")
    for call in (
        lambda: admin.create_tenant(db, "x\x00"),
        lambda: admin.create_tenant(db, "-leading-dash"),
        lambda: admin.create_tenant(db, "t" * 64),
        lambda: admin.create_tenant(db, "okay", "bad\x00name"),
        lambda: admin.create_user(db, "acme", "", "a-long-password", "viewer"),
        lambda: admin.create_user(db, "acme", "line\nbreak", "a-long-password", "viewer"),
        lambda: admin.create_user(db, "ac\x00me", "u", "a-long-password", "viewer"),
        lambda: admin.create_user(db, "nope", "u", "a-long-password", "viewer"),
        lambda: admin.create_api_key(db, "acme", "", "viewer"),
        lambda: admin.create_api_key(db, "acme", "k", "superuser"),
        lambda: admin.create_api_key(db, "Nope", "k", "viewer"),
    ):
        with pytest.raises((Invalid, NotFound)):
            await call()
    async with db.tenant("acme") as conn:
        cur = await conn.execute("SELECT action FROM audit_log")
        assert [r["action"] for r in await cur.fetchall()] == ["tenant.created"]


# The processes of `lily serve`: API processes, and the pipeline in a process of its own
# (`lily pipeline-process`), started again when it dies and stopped with the server.


def children(pid: int) -> dict[str, list[int]]:
    """The ``lily`` children of ``pid`` by their command: api-process, pipeline-process."""
    found: dict[str, list[int]] = {}
    for child in psutil.Process(pid).children():
        try:
            cmdline = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        for kind in ("api-process", "pipeline-process"):
            if kind in cmdline and child.status() != psutil.STATUS_ZOMBIE:
                found.setdefault(kind, []).append(child.pid)
    return found


def wait_for(what: str, check: Any, deadline_seconds: float = 30) -> Any:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)  # between polls of the process table, not as synchronisation
    raise AssertionError(f"{what} did not happen within {deadline_seconds}s")


def create(base: str, key: str, name: str) -> httpx.Response:
    return httpx.post(
        f"{base}/metadata",
        json={"qualified_name": name, "type": "table"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_the_pipeline_runs_apart_is_restarted_when_killed_and_stops_with_the_server(env: dict[str, str]) -> None:
    assert lily(env, "admin", "create-tenant", "acme").returncode == 0
    key = lily(env, "admin", "create-api-key", "acme", "ci", "--role", "editor").stdout.strip()
    proc, base = start_serve({**env, "LILY_API_PROCESSES": "2"})
    try:
        wait_until_healthy(base, proc)
        kids = wait_for("the children starting", lambda: (k := children(proc.pid)).get("pipeline-process") and k)
        assert len(kids["pipeline-process"]) == 1 and len(kids["api-process"]) == 1, kids
        # 201, not 202: the write was applied (by the pipeline process: the main process runs no worker).
        assert create(base, key, "pg://db/s/one").status_code == 201
        first = kids["pipeline-process"][0]
        psutil.Process(first).send_signal(signal.SIGKILL)
        again = wait_for(
            "a new pipeline process",
            lambda: [p for p in children(proc.pid).get("pipeline-process", []) if p != first],
        )
        assert len(again) == 1
        answer = create(base, key, "pg://db/s/two")
        assert answer.status_code == 201, answer.text
        everyone = [*children(proc.pid).get("api-process", []), *again]
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
    assert not [p for p in everyone if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_no_pipeline_process_when_serve_runs_no_workers(env: dict[str, str]) -> None:
    proc, base = start_serve({**env, "LILY_API_PROCESSES": "2", "LILY_WORKERS_IN_SERVE": "0"})
    try:
        wait_until_healthy(base, proc)
        kids = wait_for("the API helper starting", lambda: (k := children(proc.pid)).get("api-process") and k)
        assert "pipeline-process" not in kids, kids
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output


def test_the_pipeline_can_stay_in_the_main_process(env: dict[str, str]) -> None:
    assert lily(env, "admin", "create-tenant", "acme").returncode == 0
    key = lily(env, "admin", "create-api-key", "acme", "ci", "--role", "editor").stdout.strip()
    proc, base = start_serve({**env, "LILY_API_PROCESSES": "1", "LILY_PIPELINE_PROCESS": "false"})
    try:
        wait_until_healthy(base, proc)
        assert create(base, key, "pg://db/s/one").status_code == 201  # applied by the main process's worker
        assert children(proc.pid) == {}
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output


def test_the_pipeline_processes_run_on_uvloop() -> None:
    """``lily worker`` and ``lily serve``'s pipeline process run their loop as the API processes do."""
    import asyncio

    import uvloop

    from lily.cli import _run_loop

    seen: list[object] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    _run_loop(main())
    assert len(seen) == 1 and isinstance(seen[0], uvloop.Loop)
