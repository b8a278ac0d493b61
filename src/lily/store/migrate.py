"""Forward-only, numbered SQL migrations (``migrations/NNNN_name.sql``), applied in order.

Runs as the login role, which owns the schema. Concurrent starts are serialised by an advisory lock,
so ``lily serve`` and ``lily worker`` may both start at once. After migrating, the application roles
get their grants and the event log gets its partitions.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

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
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for number, name, sql in available():
                if number in applied:
                    continue
                log.info("applying migration %s", name)
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", [number, name])
            with conn.transaction():
                conn.execute(_GRANTS.encode())
                _grant_membership(conn)
                _ensure_partitions(conn, partitions)
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            return int(str(row[0])) if row and row[0] is not None else 0
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])


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
