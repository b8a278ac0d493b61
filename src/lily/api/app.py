"""The app factory. Every router is listed in ``API_ROUTERS``: the whole surface, read in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI

from lily import __version__
from lily.api import errors
from lily.api.limits import BodyLimitMiddleware
from lily.api.query import refuse_unknown_query
from lily.api.responses import FastJSON
from lily.api.routers import (
    access,
    api_keys,
    auth,
    bulk,
    changes,
    classification,
    connectors,
    dead_letters,
    events,
    jobs,
    lineage,
    metadata,
    notifications,
    search,
    sql_lineage,
    system,
    tenant_deletion,
    tenants,
    users,
)
from lily.api.runtime import Runtime
from lily.api.web import web_context
from lily.auth.tokens import TokenConfig
from lily.changes.waker import ChangeWaker
from lily.config import Settings
from lily.crypto import Keyring
from lily.heap import settle_after_startup
from lily.pipeline.waiter import AppliedWaiter
from lily.pipeline.writer import Writer
from lily.plugins import PluginError, Plugins, load_plugins
from lily.store.db import Database
from lily.store.sealed import check_keys

log = logging.getLogger(__name__)

BASE_PATH = "/lily/v1"

# Routers are tried in this order on every request, each route's pattern in turn, so the hottest routes
# come first: matching the item route last cost a tenth of a point read's CPU, and with POST /metadata
# sixteenth a create spent 0.4 ms matching (about 25 µs a router, on a machine with a slow core). Order
# matters only where paths overlap. /metadata/{asset_id} takes any single segment, so a route answering
# GET, PUT or DELETE at a fixed /metadata/<segment> must come before it (/metadata/search).
# tests/api/test_route_order.py fails when a route is hidden behind one tried before it.
API_ROUTERS: tuple[APIRouter, ...] = (
    search.router,
    metadata.item_router,
    metadata.router,  # POST /metadata, the hottest write
    auth.router,
    system.router,
    tenants.router,
    tenant_deletion.router,
    users.router,
    api_keys.router,
    events.router,
    changes.router,
    dead_letters.router,
    jobs.router,
    connectors.router,
    notifications.router,
    notifications.notify_router,
    access.router,
    sql_lineage.router,
    lineage.router,
    bulk.router,
    classification.router,
)


def create_app(
    settings: Settings,
    database_url: str,
    *,
    run_workers: bool = True,
    plugins: Plugins | None = None,
    run_scheduler: bool = False,
    run_dispatcher: bool = False,
) -> FastAPI:
    """Build the app. ``run_workers`` runs pipeline workers in this process (``lily serve``), and
    ``run_scheduler`` a scheduler (``lily serve`` unless ``LILY_SCHEDULER_IN_SERVE=false``), and
    ``run_dispatcher`` an outbound dispatcher (``lily serve`` unless ``LILY_DISPATCHER_IN_SERVE=false``).

    The plugin registry is loaded here, once (unless given): a bad plugin stops the app from being built.
    """
    plugins = plugins if plugins is not None else load_plugins(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(
            database_url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.pool_timeout_seconds,
            tenant_share=settings.pool_tenant_share,
        )
        await db.open()
        # A process that cannot decrypt the secrets in the database refuses to start (SecretKeyError).
        try:
            app.state.keyring = keyring = Keyring.from_settings(settings)
            await check_keys(db, keyring)
        except BaseException:
            await db.close()
            raise
        waiter = AppliedWaiter(db)
        await waiter.start()
        tokens = TokenConfig(
            settings.resolved_jwt_secret(), settings.jwt_issuer, settings.jwt_audience, settings.jwt_ttl_seconds
        )
        runtime = Runtime(settings, db, Writer(db, settings, waiter), tokens)
        runtime.change_waker = ChangeWaker(database_url)
        app.state.runtime = runtime
        stop = asyncio.Event()
        if run_workers:
            from lily.pipeline.runner import start_workers

            runtime.background.extend(
                start_workers(db, settings, stop, count=settings.workers_in_serve, plugins=plugins)
            )
        if run_scheduler:
            from lily.scheduler import start_scheduler

            runtime.background.append(start_scheduler(db, settings, plugins.jobs, stop))
        if run_dispatcher:
            from lily.dispatch.dispatcher import Dispatcher

            dispatcher = Dispatcher(db, settings, plugins.channels, keyring)
            runtime.background.append(asyncio.create_task(dispatcher.run(stop), name="dispatcher"))
        settle_after_startup()
        try:
            yield
        finally:
            stop.set()
            for task in runtime.background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=10)
            await runtime.writer.waker.flush()
            await waiter.stop()
            await runtime.change_waker.stop()
            await db.close()

    app = FastAPI(
        title="Lily",
        version=__version__,
        description="Real-time, multi-tenant metadata platform: assets, lineage, governance, audit.",
        lifespan=lifespan,
        default_response_class=FastJSON,
    )
    app.state.plugins = plugins
    for router in API_ROUTERS:
        app.include_router(router, prefix=BASE_PATH, dependencies=[Depends(refuse_unknown_query)])
    large_bodies = mount_connectors(app, plugins)
    errors.install(app)
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_asset_body_bytes,
        overrides={
            f"{BASE_PATH}/metadata/bulk": settings.max_bulk_body_bytes,
            **dict.fromkeys(large_bodies, settings.max_bulk_body_bytes),
        },
        idle_timeout=settings.body_read_timeout_seconds,
        total_timeout=settings.body_total_timeout_seconds,
    )
    return app


def mount_connectors(app: FastAPI, plugins: Plugins) -> list[str]:
    """Mount every connector's routes (at the full paths they chose, e.g. Marquez's ``/api/v1``), under
    the same refusal of undeclared query parameters as Lily's own, and return the path prefixes that
    take bulk-sized bodies."""
    web = web_context()
    large: list[str] = []
    for name in sorted(plugins.connectors):
        connector = plugins.connectors[name]
        try:
            router = connector.router(web)
        except Exception as exc:
            raise PluginError(
                f"{plugins.describe('connector', name)}: router() failed: {type(exc).__name__}: {exc}"
            ) from exc
        if router is not None:
            app.include_router(router, dependencies=[Depends(refuse_unknown_query)])
        large.extend(getattr(connector, "large_bodies", ()))
    return large
