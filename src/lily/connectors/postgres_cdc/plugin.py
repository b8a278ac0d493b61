"""The ``postgres-cdc`` connector: a PostgreSQL database's schema changes, seen within seconds.

Two halves:

- ``run(ctx)`` — what the registry's run machinery calls — is the *crawl*: it installs the DDL capture in
  the source (see :mod:`.source`), creates the connector's replication slot if it has none, and only
  then crawls the database with the ``postgres`` crawler, so a change made during the crawl is in the
  slot and is applied after it. It runs when the connector is new, when it fell back (slot dropped), or
  on request.
- the consumer (:mod:`.consumer`, the ``cdc_consumers`` job) streams the slot from then on.

Registered in Lily's ``pyproject.toml`` exactly as a third-party connector would be::

    [project.entry-points."lily.connectors"]
    postgres-cdc = "lily.connectors.postgres_cdc.plugin:PostgresCdcConnector"
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import psycopg
from fastapi import APIRouter
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from lily.connectors.postgres.plugin import PostgresConfig
from lily.connectors.postgres_cdc import source
from lily.domain.errors import Invalid
from lily.plugins.protocols import ConnectorRunContext, EventHandler, RunResult, WebContext


class CdcConfig(PostgresConfig):
    """The ``postgres`` crawler's config (where, what to include), and how CDC guards the source's disk."""

    install: bool = Field(
        default=True, description="Install the DDL capture (event triggers need a superuser); false: a DBA did"
    )
    max_lag_bytes: int = Field(
        default=1024**3,
        ge=1024 * 1024,
        description="A slot this far behind the source's WAL is dropped and the connector crawls instead",
    )
    max_down_seconds: int = Field(
        default=3600,
        ge=10,
        description="A connector whose consumer has not read its slot for this long drops it and crawls instead",
    )


def slot_name(connector_id: str) -> str:
    return f"lily_cdc_{connector_id.replace('-', '')}"


async def connect(config: PostgresConfig, check: Any, application_name: str) -> source.Conn:
    """A connection to the source, after the address guard (``check(host, port, database)``) allowed it."""
    target = config.target()
    host, port, database = str(target["host"]).lower(), int(target["port"]), str(target["database"])
    check(host, port, database)
    params = {k: v for k, v in target.items() if v is not None and k != "database"}
    params["dbname"] = database
    conn = await psycopg.AsyncConnection.connect(
        **params,
        connect_timeout=config.connect_timeout_seconds,
        application_name=application_name,
        autocommit=True,
        row_factory=dict_row,
    )
    # An empty search_path makes pg_get_viewdef qualify every name (the crawler's view lineage needs it).
    await conn.execute(f"SET search_path = ''; SET statement_timeout = {int(config.statement_timeout_seconds) * 1000}")
    return conn


def namespace_of(config: PostgresConfig) -> tuple[str, str]:
    target = config.target()
    return f"postgres://{str(target['host']).lower()}:{int(target['port'])}", str(target["database"])


class PostgresCdcConnector:
    name = "postgres-cdc"
    Config: ClassVar[type[BaseModel]] = CdcConfig

    def router(self, web: WebContext) -> APIRouter | None:
        return None

    def handlers(self) -> Sequence[EventHandler]:
        return []

    async def removed(self, config: BaseModel, state: dict[str, Any], check_target: Any) -> None:
        """The instance was deleted: drop its slot, so the source stops keeping WAL for it (the registry
        calls this after the delete committed; a running consumer would also drop it when it notices)."""
        assert isinstance(config, CdcConfig)
        slot = str(state.get("slot") or "")
        if not slot:
            return
        conn = await connect(config, check_target, "lily-cdc-remove")
        async with conn:
            await source.drop_slot(conn, slot)

    async def run(self, ctx: ConnectorRunContext) -> RunResult:
        from lily.connectors.postgres.crawl import crawl

        config = ctx.config
        assert isinstance(config, CdcConfig)
        slot = slot_name(ctx.connector_id)
        conn = await connect(config, ctx.check_target, "lily-cdc-setup")
        async with conn:
            if await source.wal_level(conn) != "logical":
                raise Invalid("the source runs with wal_level other than 'logical'; CDC needs it", field="config")
            if config.install:
                await source.install(conn)
            position = await source.slot_position(conn, slot)
            created = position is None
            if position is None:
                position = await source.create_slot(conn, slot)
        # The slot exists before the crawl starts: whatever changes meanwhile is streamed afterwards.
        result = await crawl(ctx, config)
        if created or "lsn" not in ctx.state:
            ctx.state["lsn"] = position
        ctx.state.update(slot=slot, since=datetime.now(UTC).isoformat(), lag_bytes=None)
        ctx.state.update(with_health(ctx.state))
        result.detail["slot"] = slot
        result.detail["slot_created"] = created
        return result


def clear_slot_state(state: dict[str, Any], why: str) -> dict[str, Any]:
    """The state of a connector whose slot was dropped: the next crawl makes a new one."""
    out = {k: v for k, v in state.items() if k not in ("slot", "lsn", "lag_bytes")}
    out["fallback"] = {"at": datetime.now(UTC).isoformat(), "why": why}
    return out


HEALTH = ("slot", "lag_bytes", "confirmed_at", "ddl", "events", "error", "error_at", "fallback")


def with_health(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its ``health``: what the registry shows as the connector's health detail (the
    slot, its lag in bytes, when the consumer last confirmed a position, DDL and events applied, the
    last error, the last fall-back to a crawl and why)."""
    return {**state, "health": {k: state.get(k) for k in HEALTH}}
