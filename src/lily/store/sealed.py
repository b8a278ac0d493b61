"""Sealed columns across tables: the start-up key check and the re-sealing after a key rotation.

A sealed column is any ``text`` column whose name ends in ``_sealed`` (see :mod:`lily.crypto`); both
functions find them through ``information_schema`` and read them as ``lily_pipeline``, which the owning
table lets see every tenant's rows (its ``pipeline_reads_sealed`` policy).
"""

from __future__ import annotations

from psycopg import sql

from lily.crypto import SEALED_SUFFIX, Keyring, SecretKeyError
from lily.store.db import Conn, Database, as_pipeline


async def sealed_columns(conn: Conn) -> list[tuple[str, str]]:
    cur = await conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND column_name LIKE %s AND data_type = 'text'"
        " ORDER BY 1, 2",
        ["%" + SEALED_SUFFIX.replace("_", r"\_")],
    )
    return [(r["table_name"], r["column_name"]) for r in await cur.fetchall()]


async def key_ids_in_use(conn: Conn, table: str, column: str) -> dict[str, int]:
    query = sql.SQL(
        "SELECT split_part({c}, ':', 1) AS kid, count(*) AS n FROM {t} WHERE {c} IS NOT NULL GROUP BY 1"
    ).format(c=sql.Identifier(column), t=sql.Identifier(table))
    cur = await conn.execute(query)
    return {r["kid"]: r["n"] for r in await cur.fetchall()}


async def check_keys(db: Database, keyring: Keyring) -> None:
    """:class:`SecretKeyError` naming every table and column holding secrets the key ring cannot open.

    Called when a process starts: one that cannot open its secrets must not start and send nothing.
    """
    missing: list[str] = []
    async with db.system() as conn:
        await as_pipeline(conn)
        for table, column in await sealed_columns(conn):
            for kid, count in sorted((await key_ids_in_use(conn, table, column)).items()):
                if kid not in keyring.ids:
                    missing.append(f"{count} in {table}.{column} sealed with key id {kid!r}")
    if missing:
        raise SecretKeyError(
            "cannot start: the database holds secrets this process cannot decrypt ("
            + "; ".join(missing)
            + f"). The key ring has key id(s) {', '.join(sorted(keyring.ids))}. Set LILY_SECRET_KEY to the"
            " key(s) the other Lily processes use (comma-separated, newest first)."
        )


async def reseal_batch(conn: Conn, keyring: Keyring, table: str, column: str, limit: int) -> int:
    """Re-seal up to ``limit`` values of one column not sealed with the first key; how many were."""
    t, c = sql.Identifier(table), sql.Identifier(column)
    cur = await conn.execute(
        sql.SQL(
            "SELECT ctid::text AS row, {c} AS sealed FROM {t} WHERE {c} IS NOT NULL AND {c} NOT LIKE %s"
            " LIMIT %s FOR UPDATE SKIP LOCKED"
        ).format(c=c, t=t),
        [keyring.primary_id + ":%", limit],
    )
    rows = await cur.fetchall()
    fresh = []
    for r in rows:
        try:
            fresh.append((r["row"], keyring.reseal(r["sealed"])))
        except SecretKeyError:
            continue  # a value no key opens stays as it is; the start-up check names it
    if fresh:
        await conn.execute(
            sql.SQL(
                "UPDATE {t} SET {c} = v.sealed FROM unnest(%s::text[], %s::text[]) AS v(row, sealed)"
                " WHERE {t}.ctid = v.row::tid"
            ).format(c=c, t=t),
            [[f[0] for f in fresh], [f[1] for f in fresh]],
        )
    return len(fresh)


async def reseal_all(db: Database, keyring: Keyring, *, batch: int = 500, max_rows: int = 100_000) -> dict[str, int]:
    """Re-seal every column's stale values in short transactions; counts per ``table.column``."""
    done: dict[str, int] = {}
    async with db.system() as conn:
        await as_pipeline(conn)
        columns = await sealed_columns(conn)
    for table, column in columns:
        total = 0
        while total < max_rows:
            async with db.system() as conn:
                await as_pipeline(conn)
                n = await reseal_batch(conn, keyring, table, column, batch)
            total += n
            if n < batch:
                break
        done[f"{table}.{column}"] = total
    return done
