"""Connection handling: one pool per process, transactions scoped to a tenant.

Connections log in as whatever role the URL names (it owns the schema and runs migrations) and then
``SET ROLE lily_app``: a role that owns no table and cannot bypass row-level security. Every tenant
transaction sets ``lily.tenant_id`` with ``set_config(..., true)`` so it lasts exactly one transaction.

Every checkout goes through a circuit breaker (:mod:`lily.store.breaker`): while the database is down
a caller gets :class:`~lily.domain.errors.ServiceUnavailable` (503) at once, and a lost connection or
a checkout that waited ``timeout`` seconds becomes one too, never a 30-second hang or a 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from lily.domain.access import Caller
from lily.domain.errors import ServiceUnavailable
from lily.store.breaker import Breaker, means_unavailable
from lily.store.shares import TenantShares

APP_ROLE = "lily_app"
PIPELINE_ROLE = "lily_pipeline"

Conn = psycopg.AsyncConnection[dict[str, Any]]

# The API caller a request's tenant transactions read for (set once it is authenticated, see
# lily.api.deps.authenticate): every transaction the request opens then hides what the caller may not
# read, including those of code that does not know about access policies. Unset (None) in the pipeline,
# the scheduler and admin commands, which read everything.
CALLER: ContextVar[Caller | None] = ContextVar("lily_caller", default=None)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


set_json_dumps(_dumps)
set_json_loads(orjson.loads)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)
    await conn.execute(f"SET ROLE {APP_ROLE}")


class Database:
    """The process's connection pool and its transaction scopes."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 16,
        timeout: float = 1.0,
        tenant_share: float = 0.5,
    ) -> None:
        self.url = url
        # One tenant's transactions hold at most this part of the pool (see lily.store.shares).
        self.shares = TenantShares(int(max_size * tenant_share), wait_seconds=timeout)
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            configure=_configure,
            # connect_timeout bounds a connection attempt to a server that does not answer at all.
            kwargs={"row_factory": dict_row, "connect_timeout": 5},
            timeout=timeout,
            name="lily",
        )
        self.breaker = Breaker(url)
        # Back from an outage, the pool still holds connections to the dead server: drop them before
        # the breaker lets requests through again.
        self.breaker.on_recover(self.pool.check)

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.breaker.close()
        await self.pool.close(timeout=2)

    async def ping(self) -> None:
        """One round trip on a pooled connection; :class:`ServiceUnavailable` if it cannot be made."""
        async with self._checkout() as conn:
            await conn.execute("SELECT 1")

    @asynccontextmanager
    async def _checkout(self) -> AsyncIterator[Conn]:
        """A pooled connection, or ``ServiceUnavailable`` when the database is (or just went) away."""
        await self.breaker.settle()
        try:
            async with self.pool.connection() as conn:
                try:
                    yield conn
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    if means_unavailable(exc, conn):
                        raise self.breaker.suspect(exc) from exc
                    raise
        except PoolTimeout as exc:
            raise self.breaker.suspect(exc) from exc
        except PoolClosed as exc:
            # The process is shutting down: a request still in flight is told to retry elsewhere.
            raise ServiceUnavailable("this server is shutting down; retry", retry_after_seconds=1) from exc

    @asynccontextmanager
    async def tenant(self, tenant_id: str, caller: Caller | None = None) -> AsyncIterator[Conn]:
        """A transaction that sees only ``tenant_id``'s rows (enforced by RLS, not only by our WHEREs),
        and of the assets only those ``caller`` (default: the request's, :data:`CALLER`) may read."""
        caller = caller or CALLER.get()
        async with self.shares.hold(tenant_id), self._checkout() as conn:
            # BEGIN and the settings in one round trip: a parameterless multi-statement query goes
            # by the simple protocol, so the values travel as quoted literals. Nested
            # ``conn.transaction()`` blocks inside become savepoints, as psycopg sees a transaction open.
            begin = sql.SQL("BEGIN; SELECT set_config('lily.tenant_id', {}, true)").format(sql.Literal(tenant_id))
            if caller is not None:
                begin += sql.SQL(
                    ", set_config('lily.access_role', {}, true), set_config('lily.access_names', {}, true)"
                ).format(sql.Literal(caller.role), sql.Literal(caller.names_literal()))
            await conn.execute(begin)
            try:
                yield conn
            except BaseException:
                # Never let a failing ROLLBACK (a broken or cancelled connection) hide the real error;
                # the pool discards a connection it gets back in a bad state.
                if not conn.closed:
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    @asynccontextmanager
    async def read(self, tenant_id: str, caller: Caller | None = None) -> AsyncIterator[Conn]:
        """A read-only :meth:`tenant` transaction in one round trip, for the hottest reads.

        The connection is in pipeline mode: the settings and every statement the block executes are
        queued, and leaving the block sends them with one Sync — PostgreSQL runs a pipeline's statements
        up to its Sync as one implicit transaction, committed there — so BEGIN and COMMIT cost nothing.
        Fetch from the cursors after the block (they hold their rows by then; a fetch inside it forces an
        early round trip). The transaction is read-only: a block that raises half-way has nothing to undo.
        """
        caller = caller or CALLER.get()
        async with self.shares.hold(tenant_id), self._checkout() as conn, conn.pipeline():
            if caller is None:
                await conn.execute(_READ_AS_NOBODY, [tenant_id])
            else:
                await conn.execute(_READ_AS_CALLER, [tenant_id, caller.role, caller.names_literal()])
            yield conn

    @asynccontextmanager
    async def alone(self, tenant_id: str) -> AsyncIterator[Conn]:
        """A pooled connection outside any transaction, counted in ``tenant_id``'s share, for statements
        that set the tenant themselves (the SQL functions that append an event or read a write's outcome):
        one statement is one round trip, and one send, where a pipeline sends each of its statements."""
        async with self.shares.hold(tenant_id), self._checkout() as conn:
            yield conn

    @asynccontextmanager
    async def system(self) -> AsyncIterator[Conn]:
        """A transaction with no tenant: it sees the log's bookkeeping tables and no tenant rows."""
        async with self._checkout() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection outside any transaction, for callers that manage several in a row."""
        async with self._checkout() as conn:
            yield conn


# Database.read's first statement (the values as parameters: it is prepared, unlike tenant()'s BEGIN).
_READ_AS_NOBODY = "SELECT set_config('transaction_read_only', 'on', true), set_config('lily.tenant_id', %s, true)"
_READ_AS_CALLER = (
    _READ_AS_NOBODY + ", set_config('lily.access_role', %s, true), set_config('lily.access_names', %s, true)"
)


def caller_arguments(caller: Caller | None) -> tuple[str | None, str | None]:
    """The role and the names (a text[] literal) that the SQL functions reading as a caller take, for
    statements outside any transaction (``lily_write_outcome``, ``lily_read_asset``); (None, None) reads
    as internal work, as :meth:`Database.read` with no caller does."""
    return (None, None) if caller is None else (caller.role, caller.names_literal())


async def set_tenant(conn: Conn, tenant_id: str) -> None:
    """Switch the current transaction to another tenant (the pipeline applies several per transaction)."""
    await conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [tenant_id])


async def as_app_for(conn: Conn, tenant_id: str) -> None:
    """``SET LOCAL ROLE lily_app`` and switch the tenant, in one round trip (the worker does this per group)."""
    await conn.execute(
        f"SELECT set_config('role', '{APP_ROLE}', true), set_config('lily.tenant_id', %s, true)", [tenant_id]
    )


async def as_pipeline_relaxed(conn: Conn) -> None:
    """Become the pipeline role for an apply transaction, committing without waiting for the WAL flush.

    Safe for exactly-once: the events are durable in the log before any worker sees them, and an apply
    transaction's effects and offset commit together. A crash can lose the last few milliseconds of
    applies, never half of one; the partition then resumes from its durable offset and applies them
    again, to the same versions.
    """
    await conn.execute(f"SET LOCAL ROLE {PIPELINE_ROLE}; SET LOCAL synchronous_commit = off")


async def as_pipeline(conn: Conn) -> None:
    await conn.execute(f"SET LOCAL ROLE {PIPELINE_ROLE}")


async def as_app(conn: Conn) -> None:
    await conn.execute(f"SET LOCAL ROLE {APP_ROLE}")


async def owner_connection(url: str) -> psycopg.AsyncConnection[dict[str, Any]]:
    """A connection as the login role (schema owner), for migrations and admin bootstrap only."""
    return await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)


async def insert_rows(
    conn: Conn, table: str, columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert many rows with one statement, passing each column as an array.

    COPY would be faster but PostgreSQL refuses COPY FROM into tables with row-level security, and
    every tenant table has it; ``INSERT … SELECT FROM unnest(…)`` is the next best, a single round trip.
    The arrays travel in binary (``%b``): in text format psycopg escapes every quote of every jsonb
    element with a Python-level regex, which cost 3-4x the insert itself for asset version rows.
    """
    if not rows:
        return
    arrays: list[list[Any]] = [[] for _ in columns]
    for row in rows:
        for i, value in enumerate(row):
            arrays[i].append(Jsonb(value) if types[i] == "jsonb" and value is not None else value)
    casts = ", ".join(f"%b::{t}[]" for t in types)
    await conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({casts})", arrays)
