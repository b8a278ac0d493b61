"""Several API processes on one port: ``lily serve --workers N`` / ``lily api --workers N``.

One Python process serves about one core's worth of requests. The process that ``lily serve`` starts
binds the port, keeps every part that must run once — migrations, the embedded PostgreSQL and its
supervisor, pipeline workers, the scheduler — and serves requests itself; it starts N - 1 helper
processes (``lily api-process``) that inherit the listening socket and only serve the API. The kernel
hands each new connection to whichever process accepts first.

Helpers end with the main process: SIGTERM is passed on to them, a helper whose parent is gone stops by
itself, and one that dies is started again. Each process has its own connection pool (so N pools of
``LILY_POOL_MAX_SIZE``) and its own in-memory credential cache, kept honest by the auth epoch
(``lily.auth.cache``), and its own rate-limit tokens, leased from the shared buckets (``lily.auth.leases``:
with N processes a bucket may be exceeded by at most N batches in any window).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

# How often the main process looks after its helpers, and a helper after its parent.
_WATCH_SECONDS = 0.5
# A helper that keeps dying is restarted at most this often.
_RESTART_SECONDS = 2.0


def default_count() -> int:
    """One API process per core."""
    return max(1, os.cpu_count() or 1)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every API process accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


class Helpers:
    """The main process's N - 1 helper API processes."""

    def __init__(self, sock: socket.socket, count: int, database_url: str, log_level: str) -> None:
        self.sock = sock
        self.count = count
        self.database_url = database_url
        self.log_level = log_level
        self.procs: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        fd = self.sock.fileno()
        env = {
            **os.environ,
            # The database the main process resolved (and migrated): a helper never starts or migrates one.
            "LILY_DATABASE_URL": self.database_url,
            "LILY_LOG_LEVEL": self.log_level,
        }
        command = ["api-process", "--fd", str(fd), "--parent", str(os.getpid())]
        return subprocess.Popen(
            [sys.executable, "-c", "from lily.cli import main; main()", *command], env=env, pass_fds=(fd,)
        )

    def start(self) -> None:
        for _ in range(self.count):
            self.procs.append(self._spawn())
            self._started.append(time.monotonic())
        self._watcher = threading.Thread(target=self._watch, name="lily-api-helpers", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(_WATCH_SECONDS):
            for i, proc in enumerate(self.procs):
                if proc.poll() is None or self._stopping.is_set():
                    continue
                if time.monotonic() - self._started[i] < _RESTART_SECONDS:
                    continue
                log.warning("API process %s exited with %s; starting another", proc.pid, proc.returncode)
                self.procs[i] = self._spawn()
                self._started[i] = time.monotonic()

    def stop(self) -> None:
        """Pass SIGTERM on (once); the helpers finish their requests like the main process does."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        """Wait for the helpers to exit; kill those still running after ``timeout`` seconds."""
        self.stop()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def watch_parent(parent: int) -> None:
    """In a helper: SIGTERM ourselves when the main process is gone (even killed with SIGKILL)."""

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_SECONDS)  # a poll of the parent's pid, not synchronisation
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=run, name="lily-parent-watch", daemon=True).start()
