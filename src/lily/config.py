"""Settings, read once from ``LILY_*`` environment variables at start-up.

Nothing here is built at import time: callers construct :class:`Settings` in one place (the CLI or a
test fixture) and pass it down.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LILY_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset means the embedded server in LILY_HOME."
    )
    home: Path = Field(default=Path("~/.lily"), description="Data directory for the embedded server.")
    host: str = "127.0.0.1"
    port: int = 8000

    pool_min_size: int = 2
    pool_max_size: int = 16
    # Ops: a request waits at most this long for a pooled connection, then answers 503 (never 30 s).
    pool_timeout_seconds: float = Field(default=1.0, gt=0)
    # The part of a process's pool one tenant's transactions may hold at once (fair shares).
    pool_tenant_share: float = Field(default=0.5, gt=0, le=1)
    # Deployment-wide views (system-wide metrics, detailed health): a bearer token compared in constant
    # time. Unset means those views are closed. SecretStr keeps it out of reprs and logs.
    operator_token: SecretStr | None = None
    # A metrics listener for processes without an API (`lily worker`, `lily scheduler`); needs the
    # operator token. Unset means no listener.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Auth. An unset secret is generated once and kept in LILY_HOME so tokens survive a restart.
    jwt_secret: str | None = None
    jwt_issuer: str = "lily"
    jwt_audience: str = "lily-api"
    jwt_ttl_seconds: int = 3600
    # Login limits (see lily.auth.login) and request rate limits, counted in PostgreSQL so they hold for
    # the whole deployment. A rate of 0 turns that limit off.
    trusted_proxies: str = Field(
        default="", description="Comma-separated addresses or networks whose X-Forwarded-For is believed."
    )
    login_attempts_per_account: int = Field(default=5, ge=1)
    login_attempts_per_address: int = Field(default=50, ge=1)
    login_backoff_base_seconds: float = Field(default=1.0, gt=0)
    login_backoff_max_seconds: float = Field(default=30.0, gt=0)
    login_window_seconds: float = Field(default=900.0, gt=0)
    password_hash_threads: int = Field(default=0, ge=0, description="argon2 threads; 0 means half the CPUs.")
    rate_limit_per_tenant: float = Field(default=1000.0, ge=0, description="Requests per second per tenant.")
    rate_limit_per_key: float = Field(default=500.0, ge=0, description="Requests per second per key or user.")
    rate_limit_burst_seconds: float = Field(default=2.0, gt=0, description="Bucket size, in seconds of rate.")
    rate_limit_lease_seconds: float = Field(
        default=0.05, ge=0, description="An API process takes this many seconds of a rate bucket at once (at most 50)."
    )

    # Request limits.
    max_asset_body_bytes: int = 1 * 1024 * 1024
    max_bulk_body_bytes: int = 64 * 1024 * 1024
    max_bulk_items: int = 100_000
    max_concurrent_bulk: int = Field(default=4, ge=1, description="Bulk uploads the whole deployment takes at once.")
    max_concurrent_bulk_per_tenant: int | None = Field(
        default=None, ge=1, description="Bulk uploads one tenant may hold at once; unset: half the total (at least 1)."
    )
    # A client that stops sending its body is cut off with 408: the longest wait for its next part, and
    # for all of it (from the request's start).
    body_read_timeout_seconds: float = Field(default=15.0, gt=0)
    body_total_timeout_seconds: float = Field(default=300.0, gt=0)

    def bulk_slots_per_tenant(self) -> int:
        """One tenant's share of the bulk slots: never all of them while there are two or more."""
        share = self.max_concurrent_bulk_per_tenant or max(1, self.max_concurrent_bulk // 2)
        return min(share, self.max_concurrent_bulk)

    # Event log and pipeline.
    partitions: int = Field(default=32, ge=1, le=1024)
    write_wait_seconds: float = 5.0
    worker_batch_size: int = 1000
    worker_partitions_per_transaction: int | None = Field(
        default=None, ge=1, description="Partitions a worker applies in one transaction (unset: all it finds)."
    )
    worker_linger_seconds: float = Field(
        default=0.015, ge=0, le=1, description="Pause after a busy pass, so the next batch can grow (0: none)."
    )
    worker_linger_after_events: int = Field(
        default=4, ge=1, description="A pass that moved at least this many events is busy: the worker lingers."
    )
    workers_in_serve: int = 1
    pipeline_process: bool = Field(
        default=True,
        description="Run `lily serve`'s pipeline workers in a process of their own, apart from the API's event loop.",
    )
    max_attempts: int = 5
    retry_base_seconds: float = 0.2
    retry_max_seconds: float = 30.0
    hooks: str = Field(default="*", description="Comma-separated hook names to enable, '*' for all.")
    plugins_disabled: str = Field(
        default="", description="Comma-separated kind:name of plugins not to load (channel:slack, job:retention)."
    )

    # Scheduler (`lily scheduler`, and inside `lily serve`).
    scheduler_in_serve: bool = Field(default=True, description="Run a scheduler inside `lily serve`.")
    scheduler_poll_seconds: float = Field(
        default=1.0, ge=0.05, le=10, description="How often followers try to lead and the leader looks for due jobs."
    )
    idempotency_key_ttl_seconds: int = Field(default=86_400, ge=3600, description="Age at which keys are pruned.")
    job_runs_retention_days: int = Field(default=30, ge=1, description="Finished job runs older than this are pruned.")
    change_events_retention_days: int = Field(
        default=30, ge=1, description="Change events older than this are pruned (the /changes feed's reach)."
    )

    # Connector registry (see README, Connectors).
    connector_concurrency: int = Field(default=4, ge=1, le=256, description="Connector runs one process holds at once.")
    connector_lease_seconds: float = Field(default=60.0, ge=5, description="A running connector's lease (renewed).")
    connector_run_timeout_seconds: float = Field(default=3600.0, gt=0, description="Longest a connector run may take.")
    connector_retry_base_seconds: float = Field(default=30.0, gt=0, description="First retry after a failed run.")
    connector_retry_max_seconds: float = Field(default=3600.0, gt=0, description="Longest wait between retries.")
    dbt_artifacts_root: Path | None = Field(
        default=None, description="The only directory dbt connectors may read artifacts under (unset: uploads only)."
    )
    dbt_max_artifact_bytes: int = Field(default=100 * 1024 * 1024, ge=1024, description="Largest dbt artifact read.")
    cdc_poll_seconds: float = Field(default=0.25, gt=0, le=10, description="How often a CDC consumer reads its slot.")

    # Secrets at rest and outbound delivery (see README, Notifications).
    secret_key: SecretStr | None = Field(
        default=None,
        description="Comma-separated Fernet keys: the first encrypts, all decrypt. Unset: generated into LILY_HOME.",
    )
    allow_private_targets: bool = Field(
        default=False, description="Let outbound calls reach loopback, private and link-local addresses."
    )
    dispatcher_in_serve: bool = Field(default=True, description="Run a dispatcher inside `lily serve`.")
    delivery_retry_schedule: str = Field(
        default="0,5,300,1800,7200,18000,36000,36000",
        description="Seconds before each delivery attempt (jittered); after the last, dead-lettered.",
    )
    delivery_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    delivery_concurrency: int = Field(default=64, ge=1, le=1024, description="Deliveries one dispatcher sends at once.")
    delivery_concurrency_per_channel: int = Field(default=8, ge=1, le=256)
    delivery_lease_seconds: float = Field(default=60.0, ge=1, description="A claimed delivery's lease.")
    delivery_poll_seconds: float = Field(
        default=1.0, gt=0, le=300, description="How often an idle dispatcher looks for work it was not woken for."
    )
    delivery_retention_days: int = Field(
        default=30, ge=1, description="Finished deliveries older than this are pruned."
    )
    webhook_secret_overlap_seconds: int = Field(
        default=86_400, ge=0, description="How long a rotated webhook secret keeps signing alongside the new one."
    )

    def is_operator_token(self, token: str | None) -> bool:
        """Whether ``token`` is the operator token (constant-time compare; False when none is set)."""
        if self.operator_token is None or not token:
            return False
        return hmac.compare_digest(token.encode(), self.operator_token.get_secret_value().encode())

    def resolved_home(self) -> Path:
        return self.home.expanduser()

    def resolved_jwt_secret(self) -> str:
        """The signing secret: configured, else generated once and kept (mode 0600) in LILY_HOME."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.resolved_home() / "jwt_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(48))
        return path.read_text().strip()
