"""The processes of ``lily serve`` and ``lily api``: several API processes on one port, and the pipeline
in a process of its own.

One Python process serves about one core's worth of requests. The process that ``lily serve`` starts
binds the port, keeps every part that must run once — migrations, the embedded PostgreSQL and its
supervisor, the scheduler, the dispatcher — and serves requests itself; it starts N - 1 helper
processes (``lily api-process``) that only serve the API, and one pipeline process (``lily
pipeline-process``, unless ``LILY_PIPELINE_PROCESS=false``) that runs the pipeline workers. On Linux
each API process listens on its own socket of one SO_REUSEPORT group and the kernel deals new
connections out evenly between them (:func:`own_socket`); elsewhere they share the main process's socket.

Why the pipeline has a process of its own: applying a batch is a dozen round trips, and in an API
process's event loop each of them waited behind the request handlers that ran meanwhile. Under 350
paced creates a second the wait for the apply (accept to applied, as the API saw it) had a median of
49 ms with the workers inside the main process and 15 ms with them apart (bench/api.py; README).

Children end with the main process: SIGTERM is passed on to them, a child whose parent is gone stops by
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
from collections.abc import Callable

log = logging.getLogger(__name__)

# How often the main process looks after its helpers, and a helper after its parent.
_WATCH_SECONDS = 0.5
# A helper that keeps dying is restarted at most this often.
_RESTART_SECONDS = 2.0


def default_count() -> int:
    """One API process per core."""
    return max(1, os.cpu_count() or 1)


# Linux spreads new connections evenly over the sockets of a SO_REUSEPORT group; elsewhere the option
# means something else (BSD, macOS) or nothing, and the processes share the main process's socket.
_BALANCED = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int) -> socket.socket:
    """The main process's listening socket (helpers get it by inheritance; see :func:`own_socket`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if _BALANCED and port:
        # First a bind without SO_REUSEPORT, which fails as any bind does when the port is taken. A socket
        # with the option would silently join another process's group on it — a second `lily serve`
        # started by mistake would take half of the first one's connections.
        socket.create_server((host, port), family=family).close()
    sock = socket.create_server((host, port), family=family, backlog=2048, reuse_port=_BALANCED)
    sock.set_inheritable(True)
    return sock


def own_socket(inherited: socket.socket) -> socket.socket:
    """A helper's listening socket: its own, on the address of the one it inherited, in the main
    process's SO_REUSEPORT group, so the kernel deals new connections out evenly.

    On one shared socket the process that happened to be awake took them: 93 of the 100 connections
    wrk opened for paced writes went to the main process, which also runs the pipeline workers, while
    the helper idled at 4% of a core. Where the kernel does not balance a group, the inherited socket
    is served as it is."""
    if not _BALANCED:
        return inherited
    host, port = inherited.getsockname()[:2]
    sock = socket.create_server((host, port), family=inherited.family, backlog=2048, reuse_port=True)
    inherited.close()
    return sock


def helper_command(sock: socket.socket) -> tuple[list[str], tuple[int, ...]]:
    """An API helper's ``lily`` arguments and the descriptors it inherits (the listening socket)."""
    fd = sock.fileno()
    return ["api-process", "--fd", str(fd), "--parent", str(os.getpid())], (fd,)


_PIPELINE = "pipeline-process"


def pipeline_command() -> tuple[list[str], tuple[int, ...]]:
    """The pipeline process's ``lily`` arguments (it inherits nothing)."""
    return [_PIPELINE, "--parent", str(os.getpid())], ()


class Children:
    """The main process's child processes: API helpers and the pipeline process, each one ``lily``
    command (see :func:`helper_command`, :func:`pipeline_command`), started again when it dies."""

    def __init__(self, commands: list[tuple[list[str], tuple[int, ...]]], database_url: str, log_level: str) -> None:
        self.commands = commands
        self.database_url = database_url
        self.log_level = log_level
        self.procs: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        args, fds = self.commands[i]
        env = {
            **os.environ,
            # The database the main process resolved (and migrated): a child never starts or migrates one.
            "LILY_DATABASE_URL": self.database_url,
            "LILY_LOG_LEVEL": self.log_level,
        }
        return subprocess.Popen(
            [sys.executable, "-c", "from lily.cli import main; main()", *args], env=env, pass_fds=fds
        )

    def start(self) -> None:
        for i in range(len(self.commands)):
            self.procs.append(self._spawn(i))
            self._started.append(time.monotonic())
        self._watcher = threading.Thread(target=self._watch, name="lily-children", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(_WATCH_SECONDS):
            for i, proc in enumerate(self.procs):
                if proc.poll() is None or self._stopping.is_set():
                    continue
                if time.monotonic() - self._started[i] < _RESTART_SECONDS:
                    continue
                kind = self.commands[i][0][0]
                log.warning("%s %s exited with %s; starting another", kind, proc.pid, proc.returncode)
                self.procs[i] = self._spawn(i)
                self._started[i] = time.monotonic()

    def _signal(self, which: Callable[[str], bool]) -> None:
        for (args, _), proc in zip(self.commands, self.procs, strict=True):
            if which(args[0]) and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Pass SIGTERM on (once) to the API processes, which finish their requests and exit. The pipeline
        process goes on meanwhile: a request in flight may be waiting for its write's apply. It is
        stopped by :meth:`wait`, once the main process has finished its own requests."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._signal(lambda kind: kind != _PIPELINE)

    def wait(self, timeout: float) -> None:
        """Stop the pipeline process too, and wait for the children to exit; kill those still running
        after ``timeout`` seconds."""
        self.stop()
        self._signal(lambda kind: kind == _PIPELINE)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def watch_parent(parent: int) -> None:
    """In a child: SIGTERM ourselves when the main process is gone (even killed with SIGKILL)."""

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_SECONDS)  # a poll of the parent's pid, not synchronisation
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=run, name="lily-parent-watch", daemon=True).start()
