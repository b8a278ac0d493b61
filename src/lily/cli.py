"""The ``lily`` command: serve, api, worker, migrate, admin, ingest."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from lily.config import Settings

T = TypeVar("T")


def _settings() -> Settings:
    return Settings()


def database_url(settings: Settings, *, keep_running: bool = False) -> str:
    """The configured server, or the embedded one in LILY_HOME (started, or joined if running)."""
    if settings.database_url:
        return settings.database_url
    from lily.embedded import EmbeddedHomeUnreachable, embedded_database_url

    try:
        return embedded_database_url(settings.resolved_home(), keep_running=keep_running)
    except EmbeddedHomeUnreachable as err:
        raise click.ClickException(str(err)) from err


def _migrated_url(settings: Settings) -> str:
    url = database_url(settings)
    _apply_migrations(url, settings)
    return url


def _apply_migrations(url: str, settings: Settings) -> int:
    """Migrate, or stop with a one-line error when the database is not one this release may run on."""
    from lily.store.migrate import MigrationDrift, PartitionCountMismatch, migrate

    try:
        return migrate(url, partitions=settings.partitions)
    except (MigrationDrift, PartitionCountMismatch) as err:
        raise click.ClickException(str(err)) from err


def _run_db(fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(db)`` against a migrated database and close the pool afterwards."""
    from lily.store.db import Database

    settings = _settings()
    url = _migrated_url(settings)

    async def main() -> T:
        db = Database(url, min_size=1, max_size=2)
        await db.open()
        try:
            return await fn(db)
        finally:
            await db.close()

    return asyncio.run(main())


class _Lily(click.Group):
    """The command group; a plugin refused at load ends any command with its one-line reason."""

    def invoke(self, ctx: click.Context) -> Any:
        from lily.plugins import PluginError

        try:
            return super().invoke(ctx)
        except PluginError as err:
            raise click.ClickException(str(err)) from err


@click.group(cls=_Lily)
@click.option("--log-level", default="INFO", envvar="LILY_LOG_LEVEL", show_default=True)
def main(log_level: str) -> None:
    """Lily: a real-time, multi-tenant metadata platform."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# SIGTERM ends `lily serve` within this many seconds, always: in-flight requests get GRACE seconds, and
# a watchdog ends the process at DEADLINE whatever still hangs (the embedded server, if left, is joined
# by the next start).
SHUTDOWN_GRACE_SECONDS = 3
SHUTDOWN_DEADLINE_SECONDS = 8.0


def _supervise(settings: Settings) -> Any:
    """Watch the embedded PostgreSQL and restart it when it dies (nothing to do for an external one)."""
    if settings.database_url:
        return None
    from lily.embedded import Supervisor

    supervisor = Supervisor(settings.resolved_home())
    supervisor.start()
    return supervisor


def _uvicorn_config(app: Any, host: str, port: int, level: str) -> Any:
    import uvicorn

    from lily.api.http import BoundedHttpToolsProtocol

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=level,
        access_log=False,
        # Lily reads X-Forwarded-For itself, and only from LILY_TRUSTED_PROXIES (lily.auth.clients);
        # uvicorn's own handling would believe any header sent from 127.0.0.1.
        proxy_headers=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        # httptools, with a request's head bounded as h11 bounded it (lily.api.http).
        http=BoundedHttpToolsProtocol,
    )


def _log_level() -> str:
    # uvicorn logs at the level `lily --log-level` (LILY_LOG_LEVEL) set for everything else.
    return str(logging.getLevelName(logging.getLogger().getEffectiveLevel())).lower()


def _serve(host: str | None, port: int | None, run_workers: bool, processes: int | None) -> None:
    import uvicorn

    from lily.api import processes as api_processes
    from lily.api.app import create_app

    settings = _settings()
    url = _migrated_url(settings)
    # This process runs the parts that must run once (scheduler, dispatcher, and the pipeline workers
    # unless they have a process of their own); helpers only serve. No pipeline process when there are no
    # workers to run (LILY_WORKERS_IN_SERVE=0, `lily worker`s do the work): it would exit at once and be
    # started again every two seconds.
    pipeline_apart = run_workers and settings.pipeline_process and settings.workers_in_serve > 0
    if pipeline_apart:
        _check_metrics_config(settings)  # the pipeline process serves LILY_METRICS_PORT, as `lily worker` does
    app = create_app(
        settings,
        url,
        run_workers=run_workers and not pipeline_apart,
        run_scheduler=run_workers and settings.scheduler_in_serve,
        run_dispatcher=run_workers and settings.dispatcher_in_serve,
    )
    level = _log_level()
    # After a graceful shutdown uvicorn re-raises the signal it caught. With the default SIGTERM action
    # that kills the process before atexit handlers run, leaving the embedded PostgreSQL running; exiting
    # normally instead lets it stop. (SIGINT already ends in KeyboardInterrupt, which unwinds.)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    bind_host, bind_port = host or settings.host, port or settings.port
    config = _uvicorn_config(app, bind_host, bind_port, level)
    count = processes or api_processes.default_count()
    sock = api_processes.bind(bind_host, bind_port) if count > 1 else None
    commands = [api_processes.helper_command(sock) for _ in range(count - 1)] if sock is not None else []
    if pipeline_apart:
        commands.append(api_processes.pipeline_command())
    children = api_processes.Children(commands, url, level) if commands else None

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            _arm_watchdog()  # from the first signal on, the deadline runs
            if children is not None:
                children.stop()
            super().handle_exit(sig, frame)

    supervisor = _supervise(settings)
    try:
        if children is not None:
            children.start()
        Server(config).run(sockets=[sock] if sock is not None else None)
    finally:
        if children is not None:
            children.wait(SHUTDOWN_GRACE_SECONDS + 1)
        if supervisor is not None:
            supervisor.stop()  # before atexit stops the embedded server, or it would be started again


_watchdog_armed = False


def _arm_watchdog() -> None:
    import os
    import threading

    global _watchdog_armed
    if _watchdog_armed:
        return
    _watchdog_armed = True

    def expire() -> None:
        logging.getLogger(__name__).error("shutdown still running after %ss; exiting now", SHUTDOWN_DEADLINE_SECONDS)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(SHUTDOWN_DEADLINE_SECONDS, expire)
    timer.daemon = True
    timer.start()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    _arm_watchdog()
    sys.exit(0)


_WORKERS_HELP = "API processes on the port (default: one per core, LILY_API_PROCESSES)."


@main.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1, LILY_HOST).")
@click.option("--port", default=None, type=int, help="Port (default 8000, LILY_PORT).")
@click.option("--workers", default=None, type=click.IntRange(min=1), envvar="LILY_API_PROCESSES", help=_WORKERS_HELP)
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run everything: the API (in --workers processes), pipeline workers and a scheduler (once)."""
    _serve(host, port, run_workers=True, processes=workers)


@main.command()
@click.option("--host", default=None)
@click.option("--port", default=None, type=int)
@click.option("--workers", default=None, type=click.IntRange(min=1), envvar="LILY_API_PROCESSES", help=_WORKERS_HELP)
def api(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP API only, in --workers processes (run `lily worker` processes beside it)."""
    _serve(host, port, run_workers=False, processes=workers)


@main.command("api-process", hidden=True)
@click.option("--fd", required=True, type=int)
@click.option("--parent", required=True, type=int)
def api_process(fd: int, parent: int) -> None:
    """A helper API process of `lily serve`/`lily api` (started by them, on their listening socket)."""
    import socket

    import uvicorn

    from lily.api.app import create_app
    from lily.api.processes import own_socket, watch_parent

    settings = _settings()
    if not settings.database_url:
        raise click.UsageError("api-process runs under lily serve or lily api, which set LILY_DATABASE_URL")
    watch_parent(parent)
    app = create_app(settings, settings.database_url, run_workers=False, run_scheduler=False)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sock = own_socket(socket.socket(fileno=fd))
    config = _uvicorn_config(app, settings.host, settings.port, _log_level())

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            _arm_watchdog()
            super().handle_exit(sig, frame)

    Server(config).run(sockets=[sock])


@main.command("pipeline-process", hidden=True)
@click.option("--parent", required=True, type=int)
def pipeline_process(parent: int) -> None:
    """The pipeline workers of `lily serve` (started by it; LILY_WORKERS_IN_SERVE consumer tasks)."""
    from lily.api.processes import watch_parent

    settings = _settings()
    if not settings.database_url:
        raise click.UsageError("pipeline-process runs under lily serve, which sets LILY_DATABASE_URL")
    watch_parent(parent)
    _consume(settings, settings.database_url, settings.workers_in_serve)


@main.command()
@click.option("--concurrency", default=1, show_default=True, help="Consumer tasks in this process.")
def worker(concurrency: int) -> None:
    """Consume the event log. Start as many as you like; they share the partitions."""
    settings = _settings()
    _check_metrics_config(settings)
    url = _migrated_url(settings)
    supervisor = _supervise(settings)
    try:
        _consume(settings, url, concurrency)
    finally:
        if supervisor is not None:
            supervisor.stop()


def _check_metrics_config(settings: Settings) -> None:
    from lily.pipeline.metrics_listener import MetricsConfigError, check_config

    try:
        check_config(settings)
    except MetricsConfigError as err:
        raise click.UsageError(str(err)) from err


def _consume(settings: Settings, url: str, concurrency: int) -> None:
    """Run ``concurrency`` pipeline workers until SIGTERM, with the metrics listener if one is configured."""
    from lily.pipeline.metrics_listener import serve_metrics
    from lily.pipeline.runner import run_standalone

    async def main() -> None:
        stop = asyncio.Event()
        listener = asyncio.create_task(serve_metrics(settings, stop))
        try:
            await run_standalone(url, settings, concurrency=concurrency)
        finally:
            stop.set()
            await listener

    _run_loop(main())


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (uvicorn[standard] brings it, and the API processes run on
    it already): the pipeline is a loop of round trips, and uvloop's is the cheaper event loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


@main.command()
def scheduler() -> None:
    """Run timed jobs. Start any number: one leads, another takes over within seconds if it dies."""
    from lily.scheduler import run_standalone

    settings = _settings()
    url = _migrated_url(settings)
    asyncio.run(run_standalone(url, settings))


@main.command()
def dispatcher() -> None:
    """Send outbound deliveries (webhooks, Slack, Jira). Start any number; they share the work."""
    from lily.crypto import SecretKeyError
    from lily.dispatch.runner import run_standalone

    settings = _settings()
    url = _migrated_url(settings)
    supervisor = _supervise(settings)
    try:
        asyncio.run(run_standalone(url, settings))
    except SecretKeyError as err:
        raise click.ClickException(str(err)) from err
    finally:
        if supervisor is not None:
            supervisor.stop()


@main.command()
def migrate() -> None:
    """Apply pending schema migrations."""
    settings = _settings()
    version = _apply_migrations(database_url(settings), settings)
    click.echo(f"schema at version {version}")


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per plugin instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List the loaded plugins by kind: name, entry point, distribution and version."""
    from lily.plugins import PluginError, load_plugins
    from lily.plugins.listing import render_json, render_table

    try:
        loaded = load_plugins(_settings())
    except PluginError as err:
        raise click.ClickException(str(err)) from err
    click.echo(render_json(loaded) if as_json else render_table(loaded))


@main.group()
def admin() -> None:
    """Tenants, users and API keys."""


def _admin_call(fn: Callable[[Any], Awaitable[T]]) -> T:
    from lily.domain.errors import LilyError

    try:
        return _run_db(fn)
    except LilyError as err:
        click.echo(f"error: {err.detail}", err=True)
        sys.exit(1)


@admin.command("create-tenant")
@click.argument("tenant_id")
@click.option("--name", default=None)
def create_tenant(tenant_id: str, name: str | None) -> None:
    from lily import admin as ops

    _admin_call(lambda db: ops.create_tenant(db, tenant_id, name))
    click.echo(f"tenant {tenant_id} created")


@admin.command("create-user")
@click.argument("tenant_id")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(["admin", "steward", "editor", "viewer"]))
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--group", "groups", multiple=True, help="A group the user belongs to (repeat it).")
def create_user(tenant_id: str, username: str, role: str, password_stdin: bool, groups: tuple[str, ...]) -> None:
    from lily import admin as ops

    password = _read_password(password_stdin)
    _admin_call(lambda db: ops.create_user(db, tenant_id, username, password, role, list(groups)))
    click.echo(f"user {username} created in {tenant_id} with role {role}")


@admin.command("create-api-key")
@click.argument("tenant_id")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["admin", "steward", "editor", "viewer"]))
def create_api_key(tenant_id: str, name: str, role: str) -> None:
    """Print a new API key. It is shown once; Lily keeps only its hash."""
    from lily import admin as ops

    key = _admin_call(lambda db: ops.create_api_key(db, tenant_id, name, role))
    click.echo(key)


ROLES = click.Choice(["admin", "steward", "editor", "viewer"])


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt("password", hide_input=True, confirmation_prompt=True)
    return password


def _show(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    import orjson

    if as_json:
        click.echo(orjson.dumps([{c: row[c] for c in columns} for row in rows], default=str).decode())
        return
    for row in rows:
        click.echo("\t".join(",".join(v) if isinstance(v := row[c], list) else str(v) for c in columns))


@admin.command("delete-tenant")
@click.argument("tenant_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_tenant(tenant_id: str, yes: bool) -> None:
    """Delete a tenant: none of its tokens or keys authenticates again. Its data is kept."""
    from lily import admin as ops

    if not yes:
        click.confirm(f"delete tenant {tenant_id}?", abort=True)
    _admin_call(lambda db: ops.delete_tenant(db, tenant_id))
    click.echo(f"tenant {tenant_id} deleted")


@admin.command("list-users")
@click.argument("tenant_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of tab-separated lines.")
def list_users(tenant_id: str, as_json: bool) -> None:
    """List a tenant's users: name, role, groups, disabled."""
    from lily import admin as ops

    rows = _admin_call(lambda db: ops.list_users(db, tenant_id))
    _show(rows, ["username", "role", "groups", "disabled"], as_json)


@admin.command("update-user")
@click.argument("tenant_id")
@click.argument("username")
@click.option("--role", type=ROLES, default=None)
@click.option("--group", "groups", multiple=True, help="A group (repeat it); replaces the user's groups.")
@click.option("--no-groups", is_flag=True, help="Remove the user from every group.")
@click.option("--disable/--enable", "disabled", default=None, help="Disabling ends the user's sessions.")
@click.option("--password-stdin", is_flag=True, help="Read a new password from standard input.")
def update_user(
    tenant_id: str,
    username: str,
    role: str | None,
    groups: tuple[str, ...],
    no_groups: bool,
    disabled: bool | None,
    password_stdin: bool,
) -> None:
    """Change a user's role, groups, disabled state or password. Takes effect on the next request."""
    from lily import admin as ops

    password = _read_password(True) if password_stdin else None
    new_groups = [] if no_groups else (list(groups) if groups else None)
    row = _admin_call(
        lambda db: ops.update_user(
            db, tenant_id, username, role=role, groups=new_groups, disabled=disabled, password=password
        )
    )
    _show([row], ["username", "role", "groups", "disabled"], False)


@admin.command("delete-user")
@click.argument("tenant_id")
@click.argument("username")
def delete_user(tenant_id: str, username: str) -> None:
    """Delete a user; its tokens stop working on the next request."""
    from lily import admin as ops

    _admin_call(lambda db: ops.delete_user(db, tenant_id, username))
    click.echo(f"user {username} deleted from {tenant_id}")


@admin.command("list-api-keys")
@click.argument("tenant_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of tab-separated lines.")
def list_api_keys(tenant_id: str, as_json: bool) -> None:
    """List a tenant's live API keys: id, name, role, created (never the keys themselves)."""
    from lily import admin as ops

    rows = _admin_call(lambda db: ops.list_api_keys(db, tenant_id))
    _show(rows, ["key_id", "name", "role", "created_at"], as_json)


@admin.command("revoke-api-key")
@click.argument("tenant_id")
@click.argument("key_id")
def revoke_api_key(tenant_id: str, key_id: str) -> None:
    """Revoke an API key; it stops working on the next request."""
    from lily import admin as ops

    _admin_call(lambda db: ops.revoke_api_key(db, tenant_id, key_id))
    click.echo(f"API key {key_id} revoked")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Lily's base URL.")
@click.option("--token", envvar="LILY_TOKEN", required=True, help="API key or JWT (editor+); env LILY_TOKEN.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the job until it ends.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def ingest(file: Path, url: str, token: str, wait: bool, progress: bool) -> None:
    """Send a JSON array or NDJSON file of assets through the bulk API.

    Exits 0 when every item was applied, 3 when some or all failed (errors are listed), 1 when the
    upload itself was refused.
    """
    from lily.bulk.client import IngestError
    from lily.bulk.client import ingest as run

    try:
        status = run(file, url, token, wait=wait, progress=progress)
    except IngestError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if not wait:
        click.echo(
            f"job {status['job_id']} accepted: {status['total']} items ({status['rejected']} rejected)"
            f"; status at {status['status_url']}"
        )
        return
    click.echo(
        f"job {status['job_id']}: {status['state']} — total {status['total']}, applied"
        f" {status['applied']}, failed {status['failed']}"
    )
    for error in status["errors"]:
        click.echo(f"  item {error['index']}: {error['error']}")
    if status["state"] != "succeeded":
        sys.exit(3)
