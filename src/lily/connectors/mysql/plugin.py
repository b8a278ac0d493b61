"""The ``mysql`` crawler: MySQL and MariaDB databases through ``information_schema`` (see :mod:`.crawl`).

Registered in Lily's ``pyproject.toml`` exactly as a third-party connector would be::

    [project.entry-points."lily.connectors"]
    mysql = "lily.connectors.mysql.plugin:MySQLConnector"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from lily.domain import connectors as rules
from lily.plugins.protocols import ConnectorRunContext, EventHandler, RunResult, WebContext

Pattern = Annotated[str, StringConstraints(min_length=1, max_length=200)]
SYSTEM_DATABASES = ("information_schema", "mysql", "performance_schema", "sys")


class MySQLConfig(BaseModel):
    """Where the source is (a ``dsn``, or ``host``/``port``/``user``/``password`` and optionally
    ``database``) and what to crawl. The DSN and the password are secrets: sealed at rest, never shown.
    With a database in the DSN (or ``database``) only that database is crawled, unless
    ``include_databases`` says otherwise; with neither, every non-system database."""

    model_config = ConfigDict(extra="forbid")

    dsn: SecretStr | None = Field(default=None, description="mysql://user:password@host:port/database")
    host: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = None
    port: int = Field(default=3306, ge=1, le=65535)
    database: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    user: Annotated[str, StringConstraints(min_length=1, max_length=80)] | None = None
    password: SecretStr | None = None
    include_databases: list[Pattern] = Field(default_factory=list, max_length=1000)
    exclude: list[Pattern] = Field(
        default_factory=list, max_length=1000, description="Patterns of database or database.table names to leave out"
    )
    max_removal_share: float = Field(default=rules.DEFAULT_MAX_REMOVAL_SHARE, ge=0, le=1)
    max_removal_count: int = Field(default=rules.DEFAULT_MAX_REMOVAL_MIN, ge=0)
    connect_timeout_seconds: int = Field(default=10, ge=1, le=120)
    read_timeout_seconds: int = Field(default=300, ge=1, le=3600)

    @model_validator(mode="after")
    def _where(self) -> Self:
        if self.dsn is not None:
            if self.host or self.database or self.user or self.password:
                raise ValueError("give either dsn or host/database/user/password, not both")
            parts = urlsplit(self.dsn.get_secret_value())
            if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
                raise ValueError("dsn must look like mysql://user:password@host:port/database")
            try:
                _ = parts.port
            except ValueError:
                raise ValueError("dsn has an invalid port") from None
        elif not (self.host and self.user):
            raise ValueError("give a dsn, or host and user")
        return self

    def target(self) -> dict[str, Any]:
        if self.dsn is not None:
            parts = urlsplit(self.dsn.get_secret_value())
            return {
                "host": parts.hostname,
                "port": parts.port or 3306,
                "database": unquote(parts.path.lstrip("/")) or None,
                "user": unquote(parts.username) if parts.username else None,
                "password": unquote(parts.password) if parts.password else "",
            }
        return {
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "password": self.password.get_secret_value() if self.password else "",
        }

    def databases(self) -> list[str]:
        """The database patterns to crawl (empty: every non-system database)."""
        if self.include_databases:
            return list(self.include_databases)
        database = self.target()["database"]
        return [database] if database else []


class MySQLConnector:
    name = "mysql"
    Config: ClassVar[type[BaseModel]] = MySQLConfig

    def router(self, web: WebContext) -> APIRouter | None:
        return None

    def handlers(self) -> Sequence[EventHandler]:
        return []

    async def run(self, ctx: ConnectorRunContext) -> RunResult:
        from lily.connectors.mysql.crawl import crawl

        config = ctx.config
        assert isinstance(config, MySQLConfig)
        return await crawl(ctx, config)
