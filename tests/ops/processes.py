"""Real processes for the fault tests: ``lily serve`` on its own embedded PostgreSQL, and a write load.

The load writes one asset per name and retries a name (same ``Idempotency-Key``) until it is
acknowledged, as a careful client would; it records every attempt, so a test can tell how fast the
server said 503, when it recovered, and which writes it acknowledged.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from tests.test_cli import lily_command

OPERATOR_TOKEN = "operator-" + "f" * 40
ACKNOWLEDGED = {200, 201, 202}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Serve:
    """One ``lily serve`` (restartable) on an embedded PostgreSQL in its own ``LILY_HOME``."""

    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LILY_")}
        return {
            **env,
            "LILY_HOME": str(self.home),
            "LILY_PARTITIONS": "8",
            "LILY_JWT_SECRET": "fault-tests-" + "s" * 32,
            "LILY_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "LILY_LOG_LEVEL": "WARNING",
        }

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/lily/v1"

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    def start(self) -> None:
        self.log = self.home / f"serve-{time.monotonic_ns()}.log"
        out = self.log.open("w")
        self.proc = subprocess.Popen(
            [*lily_command(), "serve", "--port", str(self.port)],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.wait_healthy()

    def output(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""

    def wait_healthy(self, deadline_seconds: float = 90) -> None:
        deadline = time.monotonic() + deadline_seconds
        with httpx.Client(timeout=2) as http:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.output()
                try:
                    if http.get(f"{self.base}/system/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)  # between polls of the readiness endpoint, not as synchronisation
        raise AssertionError(f"lily serve did not become healthy:\n{self.output()}")

    def spawn(self, *args: str) -> tuple[subprocess.Popen[str], Path]:
        """Another ``lily`` process on the same ``LILY_HOME`` (it joins the running embedded server); its log."""
        log = self.home / f"{args[0]}-{time.monotonic_ns()}.log"
        proc = subprocess.Popen(
            [*lily_command(), *args],
            env={**self.env, "LILY_LOG_LEVEL": "INFO"},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        return proc, log

    def lily(self, *args: str) -> str:
        r = subprocess.run([*lily_command(), *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])

    def superuser(self) -> psycopg.Connection[Any]:
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        return psycopg.connect(host=lines[4], port=int(lines[3]), user="postgres", dbname="lily", autocommit=True)

    def terminate(self, timeout: float = 30) -> float:
        """SIGTERM; seconds until the process exited."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"lily serve ignored SIGTERM for {timeout}s:\n{self.output()}") from None
        return time.monotonic() - began


def postmasters(home: Path) -> list[int]:
    """Pids of live postmasters of ``home``'s data directory (zombies excluded)."""
    pgdata = str(home / "pgdata")
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and "-D" in cmdline and pgdata in cmdline:
            found.append(proc.pid)
    return found


@contextmanager
def serve_on_embedded() -> Iterator[Serve]:
    # Not under pytest's private temp dir: the server runs as a dedicated user when started by root.
    home = Path(tempfile.mkdtemp(prefix="lily-ops-"))
    home.chmod(0o755)
    serve = Serve(home)
    try:
        serve.start()
        yield serve
    finally:
        if serve.proc is not None and serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()
        for pid in postmasters(home):  # only what a failed test left behind, by pid
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class Attempt:
    name: str
    began: float
    ended: float
    status: int | None  # None: the connection failed
    event_id: str | None = None


class Load:
    """Threads writing distinct assets as fast as the server answers, each retried until acknowledged."""

    def __init__(self, base: str, key: str, *, threads: int = 4, prefix: str = "pg://load/s.t") -> None:
        self.base = base
        self.key = key
        self.prefix = prefix
        self.attempts: list[Attempt] = []
        self.acknowledged: dict[str, Attempt] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, thread: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30, headers=headers) as http:
            i = 0
            while not self._stop.is_set():
                name = f"{self.prefix}{thread}_{i}"
                while not self._stop.is_set():
                    attempt = self._write(http, name)
                    if attempt.status in ACKNOWLEDGED:
                        with self._lock:
                            self.acknowledged[name] = attempt
                        break
                    if attempt.status not in (503, None):
                        raise AssertionError(f"unexpected answer {attempt.status} for {name}")
                    self._stop.wait(0.05)  # a client's pause before retrying, not synchronisation
                i += 1

    def _write(self, http: httpx.Client, name: str) -> Attempt:
        began = time.monotonic()
        try:
            r = http.post(
                f"{self.base}/metadata",
                json={"qualified_name": name, "type": "table"},
                headers={"Idempotency-Key": name},
            )
            status: int | None = r.status_code
            event_id = r.json().get("event_id") if r.status_code == 202 else None
            if r.status_code == 503:
                assert r.headers.get("Retry-After"), r.headers
                assert r.headers["content-type"].startswith("application/problem+json")
        except httpx.TransportError:
            status, event_id = None, None
        attempt = Attempt(name, began, time.monotonic(), status, event_id)
        with self._lock:
            self.attempts.append(attempt)
        return attempt

    def count_acknowledged(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def snapshot(self) -> list[Attempt]:
        with self._lock:
            return list(self.attempts)


def wait_for(check: Any, *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # polling observable state, bounded


def assert_each_acknowledged_write_once(serve: Serve, tenant: str, acknowledged: dict[str, Attempt]) -> None:
    """Every acknowledged write is in the log once and applied once (version 1); nothing is doubled."""
    assert acknowledged, "the load acknowledged nothing"
    with serve.superuser() as conn:

        def all_applied() -> bool:
            row = conn.execute(
                "SELECT count(*) FROM events WHERE tenant_id = %s AND status = 'accepted'", [tenant]
            ).fetchone()
            return row is not None and row[0] == 0

        wait_for(all_applied, timeout=60, what="the pipeline to apply every accepted event")
        events = dict(
            conn.execute(
                "SELECT subject, count(*) FROM events WHERE tenant_id = %s AND kind = 'asset.upsert' GROUP BY subject",
                [tenant],
            ).fetchall()
        )
        versions = {
            name: (version, count)
            for name, version, count in conn.execute(
                "SELECT a.qualified_name, a.version, count(v.*) FROM assets a"
                " JOIN asset_versions v USING (tenant_id, asset_id)"
                " WHERE a.tenant_id = %s GROUP BY a.qualified_name, a.version",
                [tenant],
            ).fetchall()
        }
    assert all(n == 1 for n in events.values()), {k: v for k, v in events.items() if v != 1}
    missing = [name for name in acknowledged if events.get(name) != 1 or versions.get(name) != (1, 1)]
    assert not missing, (missing[:10], len(missing))
