"""A database outage and a SIGTERM under load, on a real ``lily serve`` with its embedded PostgreSQL.

    python bench/outage.py                                    # the installed lily
    python bench/outage.py --threads 8 --kills 3
    python bench/outage.py --lily "env PYTHONPATH=/tmp/old/src python -c 'from lily.cli import main; main()'"

It starts ``lily serve`` in a throwaway ``LILY_HOME``, writes distinct assets from ``--threads`` client
threads (each write retried with its ``Idempotency-Key`` until acknowledged), ``kill -9``s the
postmaster ``--kills`` times, then sends SIGTERM mid-load. It prints, per kill: how long until the
first answer to a request sent after the kill (and its status), the slowest answer during the
outage, and how long until writes were acknowledged again (or that they never were within
``--give-up`` seconds); then how long SIGTERM took to end the process. Figures are printed, never
asserted: ``tests/ops/test_faults.py`` holds the assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

Attempt = tuple[float, float, int | None]  # began, ended, status (None: no answer at all)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Run:
    def __init__(self, lily: list[str], home: Path) -> None:
        self.lily = lily
        self.home = home
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LILY_")} | {
            "LILY_HOME": str(home),
            "LILY_PARTITIONS": "8",
            "LILY_JWT_SECRET": "bench-" + "s" * 32,
            "LILY_LOG_LEVEL": "ERROR",
        }
        self.base = f"http://127.0.0.1:{self.port}/lily/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [*self.lily, *args], env=self.env, capture_output=True, text=True, check=True, timeout=120
        ).stdout.strip()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.lily, "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/system/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit("lily serve did not start")

    def postmaster_pid(self) -> int:
        return int((self.home / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])


class Load:
    def __init__(self, base: str, key: str, threads: int) -> None:
        self.base, self.key = base, key
        self.attempts: list[Attempt] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, thread: int) -> None:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {self.key}"}) as http:
            i = 0
            while not self.stop.is_set():
                name = f"pg://bench/s.t{thread}_{i}"
                began = time.monotonic()
                try:
                    status: int | None = http.post(
                        f"{self.base}/metadata",
                        json={"qualified_name": name, "type": "table"},
                        headers={"Idempotency-Key": name},
                    ).status_code
                except httpx.TransportError:
                    status = None
                with self.lock:
                    self.attempts.append((began, time.monotonic(), status))
                if status in (200, 201, 202):
                    i += 1
                else:
                    self.stop.wait(0.05)

    def after(self, t: float) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a[0] >= t]

    def wait(self, check: Callable[[], list[Attempt]], timeout: float) -> list[Attempt]:
        """Poll ``check`` until it finds something; [] after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.02)
        return []


def answered(load: Load, since: float) -> list[Attempt]:
    """Requests sent since ``since`` that got an answer, the earliest answer first."""
    return sorted((a for a in load.after(since) if a[2] is not None), key=lambda a: a[1])


def acknowledged_after(load: Load, since: float) -> list[Attempt]:
    return [a for a in load.after(since) if a[2] in (200, 201, 202)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lily", default=shutil.which("lily") or "lily", help="command that runs lily")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--kills", type=int, default=1)
    parser.add_argument("--give-up", type=float, default=45.0, help="seconds to wait for recovery")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lily-bench-outage-"))
    home.chmod(0o755)  # the embedded server runs as its own user when started by root
    run = Run(shlex.split(args.lily), home)
    try:
        run.start()
        run.cli("admin", "create-tenant", "bench")
        key = run.cli("admin", "create-api-key", "bench", "load", "--role", "editor")
        load = Load(run.base, key, args.threads)
        time.sleep(2)  # a steady load before the fault (bench pacing, not synchronisation)
        for k in range(args.kills):
            pid = run.postmaster_pid()
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            first = load.wait(partial(answered, load, killed), args.give_up)
            back = load.wait(partial(acknowledged_after, load, killed), args.give_up)
            back_at = min(b[1] for b in back) if back else float("inf")
            during = [a for a in load.after(killed) if a[1] <= back_at]
            statuses = Counter(a[2] for a in during)
            first_text = f"{first[0][1] - killed:.2f}s ({first[0][2]})" if first else "none"
            recovered = f"{back_at - killed:.2f}s" if back else f"not within {args.give_up:.0f}s"
            slowest = max((a[1] - a[0] for a in during), default=0.0)
            alive = run.proc is not None and run.proc.poll() is None
            print(
                f"kill -9 #{k + 1}: first answer {first_text}, slowest answer during the outage {slowest:.2f}s,"
                f" answers {dict(statuses)}, writes acknowledged again after {recovered}, lily serve alive: {alive}"
            )
            if not back:
                break
            time.sleep(2)  # load again before the next fault
        assert run.proc is not None
        began = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(30)
            print(f"SIGTERM mid-load: exited in {time.monotonic() - began:.2f}s (status {run.proc.returncode})")
        except subprocess.TimeoutExpired:
            print("SIGTERM mid-load: still running after 30s; killed")
            run.proc.kill()
        load.stop.set()
        acknowledged = sum(1 for a in load.attempts if a[2] in (200, 201, 202))
        print(f"load: {len(load.attempts)} attempts, {acknowledged} acknowledged")
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
        with contextlib.suppress(OSError, ValueError):  # a postmaster the run left behind
            os.kill(run.postmaster_pid(), signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
