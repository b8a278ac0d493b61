"""What Lily installs in, and asks of, the source database for schema CDC.

- schema ``lily_cdc`` with ``ddl_log`` (one row per table a DDL command touched, written by two event
  triggers: ``ddl_command_end`` for creates, alters, renames and comments, ``sql_drop`` for drops) and
  ``relations`` (table oid → current name, so a rename's old name is known);
- publication ``lily_cdc`` of ``ddl_log`` inserts only: the slot's output holds nothing else;
- one logical replication slot per connector (``pgoutput``), read with SQL functions.

Rights: creating event triggers needs a superuser (PostgreSQL has no finer grant for it); the slot
needs ``REPLICATION`` (or superuser); ``wal_level = logical``. A DBA may run :data:`INSTALL` once by hand
and set the connector's ``install: false``. The objects are shared by every Lily connector reading the
database; deleting a connector drops only its slot.
"""

from __future__ import annotations

from typing import Any

import psycopg

from lily.connectors.postgres_cdc.decoding import Decoder, Transaction, int_to_lsn, lsn_to_int

SCHEMA, TABLE, PUBLICATION = "lily_cdc", "ddl_log", "lily_cdc"
RELKINDS = "('r', 'p', 'v', 'm', 'f')"

INSTALL = f"""
SELECT pg_advisory_xact_lock(hashtext('lily_cdc.install'));
CREATE SCHEMA IF NOT EXISTS lily_cdc;
CREATE TABLE IF NOT EXISTS lily_cdc.ddl_log (
    id               bigserial PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    command_tag      text NOT NULL,
    object_type      text NOT NULL,
    schema_name      text,
    table_name       text,
    old_schema_name  text,
    old_table_name   text
);
CREATE TABLE IF NOT EXISTS lily_cdc.relations (
    relid        oid PRIMARY KEY,
    schema_name  text NOT NULL,
    table_name   text NOT NULL
);
INSERT INTO lily_cdc.relations
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN {RELKINDS} AND n.nspname NOT IN ('information_schema', 'lily_cdc') AND n.nspname !~ '^pg_'
ON CONFLICT (relid) DO UPDATE SET schema_name = excluded.schema_name, table_name = excluded.table_name;

CREATE OR REPLACE FUNCTION lily_cdc.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    rel record;
    old_schema text;
    old_table text;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        CONTINUE WHEN r.classid <> 'pg_class'::regclass OR r.in_extension
            OR r.schema_name IN ('lily_cdc', 'information_schema') OR r.schema_name ~ '^pg_';
        SELECT n.nspname AS schema_name, c.relname AS table_name INTO rel
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = r.objid AND c.relkind IN {RELKINDS};
        CONTINUE WHEN NOT FOUND;
        SELECT x.schema_name, x.table_name INTO old_schema, old_table FROM lily_cdc.relations x WHERE x.relid = r.objid;
        IF old_schema = rel.schema_name AND old_table = rel.table_name THEN
            old_schema := NULL;
            old_table := NULL;
        END IF;
        INSERT INTO lily_cdc.ddl_log
            (command_tag, object_type, schema_name, table_name, old_schema_name, old_table_name)
        VALUES (r.command_tag, r.object_type, rel.schema_name, rel.table_name, old_schema, old_table);
        INSERT INTO lily_cdc.relations VALUES (r.objid, rel.schema_name, rel.table_name)
        ON CONFLICT (relid) DO UPDATE SET schema_name = excluded.schema_name, table_name = excluded.table_name;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION lily_cdc.on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        CONTINUE WHEN r.classid <> 'pg_class'::regclass OR r.is_temporary
            OR r.schema_name IN ('lily_cdc', 'information_schema') OR r.schema_name ~ '^pg_'
            OR r.object_type NOT IN ('table', 'view', 'materialized view', 'foreign table', 'table column',
                                     'view column', 'materialized view column', 'foreign table column');
        INSERT INTO lily_cdc.ddl_log (command_tag, object_type, schema_name, table_name)
        VALUES (tg_tag, r.object_type, r.address_names[1], r.address_names[2]);
        IF r.objsubid = 0 THEN
            DELETE FROM lily_cdc.relations WHERE relid = r.objid;
        END IF;
    END LOOP;
END $$;

DROP EVENT TRIGGER IF EXISTS lily_cdc_ddl;
CREATE EVENT TRIGGER lily_cdc_ddl ON ddl_command_end EXECUTE FUNCTION lily_cdc.on_ddl();
DROP EVENT TRIGGER IF EXISTS lily_cdc_drop;
CREATE EVENT TRIGGER lily_cdc_drop ON sql_drop EXECUTE FUNCTION lily_cdc.on_drop();

DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'lily_cdc') THEN
        CREATE PUBLICATION lily_cdc FOR TABLE lily_cdc.ddl_log WITH (publish = 'insert');
    END IF;
END $$;
"""

Conn = psycopg.AsyncConnection[dict[str, Any]]


async def install(conn: Conn) -> None:
    async with conn.transaction():
        await conn.execute(INSTALL)


async def wal_level(conn: Conn) -> str:
    row = await (await conn.execute("SELECT current_setting('wal_level') AS level")).fetchone()
    return str(row["level"]) if row else ""


async def slot_position(conn: Conn, slot: str) -> int | None:
    """The slot's confirmed position, or None when it does not exist."""
    cur = await conn.execute(
        "SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = %s", [slot]
    )
    row = await cur.fetchone()
    return lsn_to_int(row["lsn"]) if row and row["lsn"] else (0 if row else None)


async def create_slot(conn: Conn, slot: str) -> int:
    """Create the slot (outside any transaction: the server requires it) and return its position."""
    cur = await conn.execute("SELECT lsn::text AS lsn FROM pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
    row = await cur.fetchone()
    assert row is not None
    return lsn_to_int(row["lsn"])


async def drop_slot(conn: Conn, slot: str) -> bool:
    cur = await conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", [slot]
    )
    return cur.rowcount == 1


async def lag_bytes(conn: Conn, slot: str) -> int | None:
    cur = await conn.execute(
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint AS lag FROM pg_replication_slots"
        " WHERE slot_name = %s",
        [slot],
    )
    row = await cur.fetchone()
    return int(row["lag"]) if row and row["lag"] is not None else None


async def read(conn: Conn, slot: str, limit: int) -> tuple[list[Transaction], int]:
    """The committed transactions of DDL rows the slot holds (not consumed: a peek), and how far the
    slot may safely advance when they are handled: the last one's commit, or — when the peek came back
    short — the WAL position read before it, since every commit before that was in the peek."""
    row = await (await conn.execute("SELECT pg_current_wal_lsn()::text AS lsn")).fetchone()
    assert row is not None
    horizon = row["lsn"]
    cur = await conn.execute(
        "SELECT lsn::text AS lsn, data FROM pg_logical_slot_peek_binary_changes("
        " %s, %s::pg_lsn, %s, 'proto_version', '1', 'publication_names', %s)",
        [slot, horizon, limit, PUBLICATION],
    )
    rows = await cur.fetchall()
    decoder = Decoder((SCHEMA, TABLE))
    done: list[Transaction] = []
    for r in rows:
        finished = decoder.feed(lsn_to_int(r["lsn"]), r["data"])
        if finished is not None:
            done.append(finished)
    if len(rows) < limit:
        return done, lsn_to_int(horizon)
    return done, done[-1].lsn if done else 0


async def advance(conn: Conn, slot: str, lsn: int) -> None:
    await conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", [slot, int_to_lsn(lsn)])


async def trim_log(conn: Conn, older_than_seconds: int) -> None:
    """Old DDL rows are only history once every slot is past them; keep a day for inspection."""
    await conn.execute(
        "DELETE FROM lily_cdc.ddl_log WHERE at < clock_timestamp() - make_interval(secs => %s)", [older_than_seconds]
    )
