"""A metrics listener for processes that serve no API: ``lily worker`` and ``lily scheduler``.

Their counters (events applied, retried, dead-lettered, accept→apply latency, job runs) live in their
own memory, so the API cannot report them. With ``LILY_METRICS_PORT`` set, such a process serves
``GET /metrics`` on ``LILY_METRICS_HOST`` (127.0.0.1 by default), guarded by the operator token like the
API's system-wide view: a listener without a token would hand the deployment's figures to anyone who
can reach the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lily.config import Settings
from lily.pipeline import metrics
from lily.store.db import Database

log = logging.getLogger(__name__)


class MetricsConfigError(ValueError):
    """``LILY_METRICS_PORT`` is set but the listener cannot be served safely."""


def metrics_app(settings: Settings, db: Database | None = None) -> Starlette:
    async def render(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not settings.is_operator_token(token.strip()):
            return Response("operator token required\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(await metrics.render_system(db), media_type=metrics.CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", render, methods=["GET"])])


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_config(settings: Settings) -> None:
    if settings.metrics_port is not None and settings.operator_token is None:
        raise MetricsConfigError("LILY_METRICS_PORT needs LILY_OPERATOR_TOKEN: the listener serves operators only")


async def serve_metrics(settings: Settings, stop: asyncio.Event, db: Database | None = None) -> None:
    """Serve ``/metrics`` until ``stop`` is set; returns at once when no ``LILY_METRICS_PORT`` is set."""
    if settings.metrics_port is None:
        return
    check_config(settings)
    config = uvicorn.Config(
        metrics_app(settings, db),
        host=settings.metrics_host,
        port=settings.metrics_port,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="lily-metrics-listener")
    log.info("metrics on http://%s:%s/metrics (operator token)", settings.metrics_host, settings.metrics_port)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await task
