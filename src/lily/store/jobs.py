"""The scheduler in SQL: leadership, job registrations, runs, and the built-in prune job's deletes.

The scheduler writes as ``lily_pipeline`` (callers run :func:`lily.store.db.as_pipeline` first, or use
the leader connection, which is that role for its whole session). The API reads runs as the tenant:
row-level security then shows a tenant its own runs and the deployment-wide ones, and never another
tenant's; an operator reads every run as ``lily_pipeline``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from lily.store.db import PIPELINE_ROLE, Conn

# The advisory-lock key of leadership: (namespace, key) in the two-int form, apart from the pipeline's.
LEADER_LOCK = (0x4C4A4F42, 0)  # "LJOB"

_RUN = (
    "run_id, job, tenant_id, trigger, scheduled_for, state, requested_by, runner, created_at, started_at,"
    " finished_at, error, result"
)

# -- leadership (on the leader's own connection) ------------------------------------------------------


async def leader_connection(url: str, *, idle_timeout_seconds: int, application_name: str) -> Conn:
    """A dedicated connection for holding the leader lock, as ``lily_pipeline``.

    The lock lives as long as this connection's session, so the session must die soon after its process
    does: a killed process closes the socket at once; across a network partition TCP keepalives (both
    ends) and ``tcp_user_timeout`` end it within about ten seconds; and ``idle_session_timeout`` ends the
    session of a process that is alive but frozen (it heartbeats every poll interval while healthy).
    """
    conn = await psycopg.AsyncConnection.connect(
        url,
        autocommit=True,
        row_factory=dict_row,
        application_name=application_name,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        tcp_user_timeout=10_000,
        connect_timeout=5,
    )
    try:
        await conn.execute(
            f"SET ROLE {PIPELINE_ROLE}; SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2;"
            f" SET tcp_keepalives_count = 3; SET tcp_user_timeout = 10000;"
            f" SET idle_session_timeout = {int(idle_timeout_seconds * 1000)}"
        )
    except BaseException:
        await conn.close()
        raise
    return conn


async def try_lead(conn: Conn, node: str) -> datetime | None:
    """Take the leader lock if it is free; when taken, record ``node`` as leader and return the time."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s) AS got", list(LEADER_LOCK))
    row = await cur.fetchone()
    if not row or not row["got"]:
        return None
    cur = await conn.execute(
        "INSERT INTO scheduler_leader (node, since, heartbeat_at) VALUES (%s, clock_timestamp(), clock_timestamp())"
        " ON CONFLICT (singleton) DO UPDATE SET node = excluded.node, since = excluded.since,"
        " heartbeat_at = excluded.heartbeat_at RETURNING since",
        [node],
    )
    led = await cur.fetchone()
    assert led is not None
    since: datetime = led["since"]
    return since


async def heartbeat(conn: Conn, node: str) -> datetime | None:
    """Confirm leadership and read the database's clock; None if the row names another leader."""
    cur = await conn.execute(
        "UPDATE scheduler_leader SET heartbeat_at = clock_timestamp() WHERE node = %s RETURNING heartbeat_at",
        [node],
    )
    row = await cur.fetchone()
    return row["heartbeat_at"] if row else None


async def resign(conn: Conn, node: str) -> None:
    await conn.execute("DELETE FROM scheduler_leader WHERE node = %s", [node])
    await conn.execute("SELECT pg_advisory_unlock(%s, %s)", list(LEADER_LOCK))


async def leader_status(conn: Conn) -> dict[str, Any]:
    """Whether a leader holds the lock now (any role may read ``pg_locks``), and since when."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid = %s AND objid = %s AND objsubid = 2) AS active",
        list(LEADER_LOCK),
    )
    row = await cur.fetchone()
    active = bool(row and row["active"])
    cur = await conn.execute("SELECT node, since, heartbeat_at FROM scheduler_leader")
    leader = await cur.fetchone()
    return {
        "active": active,
        "node": leader["node"] if leader and active else None,
        "since": leader["since"] if leader and active else None,
        "heartbeat_at": leader["heartbeat_at"] if leader and active else None,
    }


# -- registrations and runs (the scheduler, as lily_pipeline) -----------------------------------------


async def register_jobs(conn: Conn, jobs: Sequence[tuple[str, str]]) -> dict[str, datetime]:
    """Record the jobs this leader runs; answer each one's first sighting (its schedule's anchor)."""
    if not jobs:
        return {}
    cur = await conn.execute(
        "INSERT INTO scheduled_jobs (job, schedule) SELECT * FROM unnest(%s::text[], %s::text[])"
        " ON CONFLICT (job) DO UPDATE SET schedule = excluded.schedule, last_seen_at = clock_timestamp()"
        " RETURNING job, first_seen_at",
        [[name for name, _ in jobs], [schedule for _, schedule in jobs]],
    )
    return {row["job"]: row["first_seen_at"] for row in await cur.fetchall()}


async def abandon_runs(conn: Conn, in_hand: Sequence[UUID]) -> int:
    """Close the runs left 'running' that the new leader is not running itself: only a leader runs jobs,
    so their runner died or was deposed, or could not record the outcome. A deposed runner that still
    finishes overwrites this outcome with the real one."""
    cur = await conn.execute(
        "UPDATE job_runs SET state = 'failed', finished_at = clock_timestamp(),"
        " error = 'abandoned: its scheduler process stopped leading before the run finished'"
        " WHERE state = 'running' AND run_id <> ALL(%s::uuid[])",
        [list(in_hand)],
    )
    return cur.rowcount


async def claim_due(conn: Conn, job: str, scheduled_for: datetime, node: str) -> dict[str, Any] | None:
    """Start the run of ``job`` due at ``scheduled_for``, or None if some process already did."""
    cur = await conn.execute(
        f"INSERT INTO job_runs (run_id, job, trigger, scheduled_for, state, runner, started_at)"
        f" VALUES (%s, %s, 'schedule', %s, 'running', %s, clock_timestamp()) ON CONFLICT DO NOTHING RETURNING {_RUN}",
        [uuid.uuid4(), job, scheduled_for, node],
    )
    return await cur.fetchone()


async def claim_requested(conn: Conn, jobs: Sequence[str], node: str) -> list[dict[str, Any]]:
    """Start the oldest waiting run-now request of each of ``jobs``: a process runs one run of a job at a
    time, and requests of tenant-scoped jobs may wait for several tenants at once. Re-checking the state
    in the UPDATE makes a concurrent claimer (a deposed leader) find the row taken and skip it."""
    if not jobs:
        return []
    cur = await conn.execute(
        f"UPDATE job_runs SET state = 'running', started_at = clock_timestamp(), runner = %s"
        f" WHERE state = 'queued' AND run_id IN (SELECT run_id FROM (SELECT run_id, row_number() OVER"
        f" (PARTITION BY job ORDER BY created_at, run_id) AS n FROM job_runs WHERE state = 'queued'"
        f" AND job = ANY(%s)) oldest WHERE n = 1) RETURNING {_RUN}",
        [node, list(jobs)],
    )
    return await cur.fetchall()


async def finish_run(
    conn: Conn, run_id: UUID, *, succeeded: bool, error: str | None, result: dict[str, Any] | None
) -> None:
    await conn.execute(
        "UPDATE job_runs SET state = %s, finished_at = clock_timestamp(), error = %s, result = %s WHERE run_id = %s",
        ["succeeded" if succeeded else "failed", error, Jsonb(result) if result is not None else None, run_id],
    )


# -- the admin API -----------------------------------------------------------------------------------


async def request_run(conn: Conn, job: str, actor: str, tenant_id: str | None) -> tuple[dict[str, Any], bool]:
    """Queue a run-now request; if one already waits for this job, that one and False."""
    cur = await conn.execute(
        f"INSERT INTO job_runs (run_id, job, tenant_id, trigger, scheduled_for, state, requested_by)"
        f" VALUES (%s, %s, %s, 'manual', clock_timestamp(), 'queued', %s) ON CONFLICT DO NOTHING RETURNING {_RUN}",
        [uuid.uuid4(), job, tenant_id, actor],
    )
    row = await cur.fetchone()
    if row is not None:
        return row, True
    cur = await conn.execute(
        f"SELECT {_RUN} FROM job_runs WHERE job = %s AND tenant_id IS NOT DISTINCT FROM %s AND state = 'queued'",
        [job, tenant_id],
    )
    waiting = await cur.fetchone()
    if waiting is None:  # claimed between the two statements: queue a fresh one
        return await request_run(conn, job, actor, tenant_id)
    return waiting, False


async def list_runs(
    conn: Conn, job: str, *, after: tuple[datetime, UUID] | None, limit: int, state: str | None = None
) -> list[dict[str, Any]]:
    """Runs of ``job`` visible to the connection's role and tenant, newest due time first."""
    where: list[str] = ["job = %s"]
    params: list[Any] = [job]
    if state is not None:
        where.append("state = %s")
        params.append(state)
    if after is not None:
        where.append("(scheduled_for, run_id) < (%s, %s)")
        params.extend(after)
    cur = await conn.execute(
        f"SELECT {_RUN} FROM job_runs WHERE {' AND '.join(where)} ORDER BY scheduled_for DESC, run_id DESC LIMIT %s",
        [*params, limit],
    )
    return await cur.fetchall()


async def get_run(conn: Conn, job: str, run_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(f"SELECT {_RUN} FROM job_runs WHERE job = %s AND run_id = %s", [job, run_id])
    return await cur.fetchone()


async def last_runs(conn: Conn, jobs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The latest started-or-finished run of each job (queued requests are not runs yet)."""
    if not jobs:
        return {}
    cur = await conn.execute(
        f"SELECT r.* FROM unnest(%s::text[]) AS j(job) CROSS JOIN LATERAL"
        f" (SELECT {_RUN} FROM job_runs WHERE job_runs.job = j.job AND state <> 'queued'"
        f"  ORDER BY scheduled_for DESC, run_id DESC LIMIT 1) r",
        [list(jobs)],
    )
    return {row["job"]: row for row in await cur.fetchall()}


async def queued_runs(conn: Conn, jobs: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not jobs:
        return {}
    cur = await conn.execute(f"SELECT {_RUN} FROM job_runs WHERE state = 'queued' AND job = ANY(%s)", [list(jobs)])
    return {row["job"]: row for row in await cur.fetchall()}


# -- pruning (the built-in ``prune_expired`` job, as lily_pipeline) -----------------------------------
# Each call deletes one bounded batch in its own short transaction, so pruning a large backlog never
# holds locks on a busy table for long.


async def prune_revoked_tokens(conn: Conn, batch: int) -> int:
    """Revocations of tokens past their expiry (the row policy lets the scheduler see no others)."""
    cur = await conn.execute(
        "DELETE FROM revoked_tokens WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM revoked_tokens WHERE expires_at < now() LIMIT %s))",
        [batch],
    )
    return cur.rowcount


async def prune_idempotency_keys(conn: Conn, older_than_seconds: int, batch: int) -> int:
    cur = await conn.execute(
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys"
        " WHERE created_at < now() - make_interval(secs => %s) LIMIT %s))",
        [older_than_seconds, batch],
    )
    return cur.rowcount


async def prune_job_runs(conn: Conn, older_than_seconds: int, batch: int) -> int:
    cur = await conn.execute(
        "DELETE FROM job_runs WHERE run_id = ANY(ARRAY(SELECT run_id FROM job_runs"
        " WHERE state IN ('succeeded', 'failed') AND finished_at < now() - make_interval(secs => %s) LIMIT %s))",
        [older_than_seconds, batch],
    )
    return cur.rowcount
