"""The ``postgres`` crawler: a PostgreSQL database's schemas, tables, views and materialised views as
assets, with columns, keys, comments, row estimates and view lineage (see :mod:`.crawl`).

Registered in Lily's ``pyproject.toml`` exactly as a third-party connector would be::

    [project.entry-points."lily.connectors"]
    postgres = "lily.connectors.postgres.plugin:PostgresConnector"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Self

from fastapi import APIRouter
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from lily.domain import connectors as rules
from lily.plugins.protocols import ConnectorRunContext, EventHandler, RunResult, WebContext

Pattern = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class PostgresConfig(BaseModel):
    """Where the source is (a ``dsn``, or ``host``/``port``/``database``/``user``/``password``) and what
    of it to crawl. The DSN and the password are secrets: sealed at rest, never shown."""

    model_config = ConfigDict(extra="forbid")

    dsn: SecretStr | None = Field(default=None, description="postgresql://user:password@host:port/database")
    host: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    database: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    user: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    password: SecretStr | None = None
    sslmode: str | None = Field(default=None, pattern=r"^(disable|allow|prefer|require|verify-ca|verify-full)$")
    include_schemas: list[Pattern] = Field(
        default_factory=list, max_length=1000, description="Schemas to crawl (patterns); empty: every user schema"
    )
    exclude: list[Pattern] = Field(
        default_factory=list, max_length=1000, description="Patterns of schema or schema.table names to leave out"
    )
    max_removal_share: float = Field(default=rules.DEFAULT_MAX_REMOVAL_SHARE, ge=0, le=1)
    max_removal_count: int = Field(default=rules.DEFAULT_MAX_REMOVAL_MIN, ge=0)
    connect_timeout_seconds: int = Field(default=10, ge=1, le=120)
    statement_timeout_seconds: int = Field(default=300, ge=1, le=3600)

    @model_validator(mode="after")
    def _where(self) -> Self:
        if self.dsn is not None:
            if self.host or self.database or self.user or self.password:
                raise ValueError("give either dsn or host/database/user/password, not both")
            try:
                parts = conninfo_to_dict(self.dsn.get_secret_value())
            except Exception:
                raise ValueError("dsn is not a PostgreSQL connection string") from None
            if not parts.get("host") or not parts.get("dbname"):
                raise ValueError("dsn must name a host and a database")
        elif not (self.host and self.database and self.user):
            raise ValueError("give a dsn, or host, database and user")
        return self

    def target(self) -> dict[str, Any]:
        """host, port, database, user, password, sslmode — from the DSN or the separate fields."""
        if self.dsn is not None:
            parts = conninfo_to_dict(self.dsn.get_secret_value())
            return {
                "host": str(parts["host"]),
                "port": int(str(parts.get("port") or 5432)),
                "database": str(parts["dbname"]),
                "user": parts.get("user"),
                "password": parts.get("password"),
                "sslmode": parts.get("sslmode") or self.sslmode,
            }
        return {
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "password": self.password.get_secret_value() if self.password else None,
            "sslmode": self.sslmode,
        }


class PostgresConnector:
    name = "postgres"
    Config: ClassVar[type[BaseModel]] = PostgresConfig

    def router(self, web: WebContext) -> APIRouter | None:
        return None

    def handlers(self) -> Sequence[EventHandler]:
        return []

    async def run(self, ctx: ConnectorRunContext) -> RunResult:
        from lily.connectors.postgres.crawl import crawl

        config = ctx.config
        assert isinstance(config, PostgresConfig)
        return await crawl(ctx, config)
