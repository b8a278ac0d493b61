"""Forward-only, numbered SQL migrations (``migrations/NNNN_name.sql``), applied in order.

Runs as the login role, which owns the schema. Concurrent starts are serialised by an advisory lock,
so ``lily serve`` and ``lily worker`` may both start at once. After migrating, the application roles
get their grants and the event log gets its partitions.

Applied migrations are immutable: each one's SHA-256 is recorded when it is applied, and a start-up
that finds a shipped file whose text differs from what was applied — or an applied migration this
release does not ship — stops with :class:`MigrationDrift` instead of running on a schema nobody
reviewed. A change to the schema is always a new numbered file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Iterator
from importlib import resources

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger(__name__)

_LOCK_KEY = 0x4C494C59  # "LILY"

_GRANTS = """
GRANT USAGE ON SCHEMA public TO lily_app, lily_pipeline;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO lily_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO lily_app;
GRANT SELECT, INSERT, UPDATE ON events TO lily_pipeline;
GRANT SELECT, UPDATE ON log_offsets, log_heads TO lily_pipeline;
"""


class PartitionCountMismatch(RuntimeError):
    """The log was created with another partition count; changing it would break per-subject order."""


class MigrationDrift(RuntimeError):
    """An applied migration was changed or is missing from this release: the schema is not the reviewed one."""


def checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def available() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every shipped migration, in order."""
    found = []
    for entry in resources.files("lily.store").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            found.append((number, entry.name, entry.read_text()))
    return sorted(found)


def migrate(url: str, *, partitions: int) -> int:
    """Apply pending migrations; return the schema version reached."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(), checksum text)"
            )
            shipped = available()
            applied = {
                int(str(version)): (str(name), recorded)
                for version, name, recorded in conn.execute("SELECT version, name, checksum FROM schema_migrations")
            }
            check_drift(applied, shipped)
            for number, name, sql in shipped:
                if number in applied:
                    continue
                log.info("applying migration %s", name)
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        [number, name, checksum(sql)],
                    )
            with conn.transaction():
                conn.execute(_GRANTS.encode())
                _grant_membership(conn)
                _ensure_partitions(conn, partitions)
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            return int(str(row[0])) if row and row[0] is not None else 0
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])


def check_drift(applied: dict[int, tuple[str, object]], shipped: list[tuple[int, str, str]]) -> None:
    """Raise :class:`MigrationDrift` if what was applied is not a prefix of what this release ships."""
    by_number = {number: (name, checksum(sql)) for number, name, sql in shipped}
    for number, (name, recorded) in sorted(applied.items()):
        if number not in by_number or by_number[number][0] != name:
            raise MigrationDrift(
                f"the database has migration {name} applied, which this release of Lily does not ship "
                f"(it ships {', '.join(n for n, _ in by_number.values()) or 'none'}); it was built by another "
                "release (before the pre-release migrations were folded into 0001_baseline.sql, or by a newer "
                "Lily): recreate it, or run the release that built it"
            )
        if recorded != by_number[number][1]:
            raise MigrationDrift(
                f"migration {name} was changed after it was applied to this database (its SHA-256 was "
                f"{recorded}, the shipped file's is {by_number[number][1]}). Applied migrations are immutable: "
                "restore the file and put the change in a new migration"
            )


@contextlib.contextmanager
def build_scratch_database(admin_url: str, *, partitions: int = 1) -> Iterator[str]:
    """A throwaway database on ``admin_url``'s server, migrated; dropped afterwards."""
    name = f"lily_scratch_{uuid.uuid4().hex[:12]}"
    params = conninfo_to_dict(admin_url)
    url = make_conninfo("", **{**params, "dbname": name})
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    try:
        migrate(url, partitions=partitions)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def _grant_membership(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    # A non-superuser login role must be a member of the app roles to SET ROLE to them.
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and not row[0]:
        conn.execute("GRANT lily_app, lily_pipeline TO CURRENT_USER")


def _ensure_partitions(conn: psycopg.Connection[tuple[object, ...]], partitions: int) -> None:
    row = conn.execute("SELECT count(*) FROM log_heads").fetchone()
    existing = int(str(row[0])) if row else 0
    if existing == 0:
        conn.execute("INSERT INTO log_heads (partition) SELECT generate_series(0, %s - 1)", [partitions])
        conn.execute("INSERT INTO log_offsets (partition) SELECT generate_series(0, %s - 1)", [partitions])
    elif existing != partitions:
        raise PartitionCountMismatch(
            f"the event log has {existing} partitions but LILY_PARTITIONS={partitions}; "
            "set LILY_PARTITIONS to the existing count"
        )


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(str(row[0])) if row and row[0] is not None else 0
