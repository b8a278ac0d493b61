"""The app factory. Every router is listed in ``API_ROUTERS``: the whole surface, read in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from lily import __version__
from lily.api import errors
from lily.api.limits import BodyLimitMiddleware
from lily.api.responses import FastJSON
from lily.api.routers import auth, bulk, dead_letters, events, lineage, metadata, system, tenants
from lily.api.runtime import Runtime
from lily.auth.tokens import TokenConfig
from lily.config import Settings
from lily.connectors.openlineage.router import router as openlineage_router
from lily.pipeline.waiter import AppliedWaiter
from lily.pipeline.writer import Writer
from lily.store.db import Database

log = logging.getLogger(__name__)

BASE_PATH = "/lily/v1"

# Order matters where paths overlap: fixed segments (/metadata/search) before /metadata/{asset_id}.
API_ROUTERS: tuple[APIRouter, ...] = (
    auth.router,
    system.router,
    tenants.router,
    events.router,
    dead_letters.router,
    metadata.router,
    lineage.router,
    bulk.router,
    metadata.item_router,
)


def create_app(settings: Settings, database_url: str, *, run_workers: bool = True) -> FastAPI:
    """Build the app. ``run_workers`` runs pipeline workers in this process (``lily serve``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(database_url, min_size=settings.pool_min_size, max_size=settings.pool_max_size)
        await db.open()
        waiter = AppliedWaiter(db)
        await waiter.start()
        tokens = TokenConfig(
            settings.resolved_jwt_secret(), settings.jwt_issuer, settings.jwt_audience, settings.jwt_ttl_seconds
        )
        runtime = Runtime(settings, db, Writer(db, settings, waiter), tokens)
        app.state.runtime = runtime
        stop = asyncio.Event()
        if run_workers:
            from lily.pipeline.runner import start_workers

            runtime.background.extend(start_workers(db, settings, stop, count=settings.workers_in_serve))
        try:
            yield
        finally:
            stop.set()
            for task in runtime.background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=10)
            await waiter.stop()
            await db.close()

    app = FastAPI(
        title="Lily",
        version=__version__,
        description="Real-time, multi-tenant metadata platform: assets, lineage, governance, audit.",
        lifespan=lifespan,
        default_response_class=FastJSON,
    )
    for router in API_ROUTERS:
        app.include_router(router, prefix=BASE_PATH)
    app.include_router(openlineage_router)  # Marquez's paths (/api/v1/lineage), outside BASE_PATH
    errors.install(app)
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_asset_body_bytes,
        # OpenLineage producers batch events and Spark plans are large: they get the bulk limit.
        overrides={
            f"{BASE_PATH}/metadata/bulk": settings.max_bulk_body_bytes,
            "/api/v1/lineage": settings.max_bulk_body_bytes,
        },
    )
    return app
