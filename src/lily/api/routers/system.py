"""``/system``: health and metrics.

``GET /system/health`` is for load balancers and orchestrators: no credential, "ok" or "unavailable"
and nothing else, within a second even when the database does not answer. Everything that describes
the deployment (every tenant's backlog, dead letters, latency) needs the operator token.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from lily import __version__
from lily.api.deps import RuntimeDep, authenticate
from lily.api.errors import problem_responses
from lily.api.operator import Operator
from lily.api.responses import FastJSON
from lily.domain.errors import Forbidden, ServiceUnavailable
from lily.domain.roles import Role
from lily.pipeline import metrics as pipeline_metrics
from lily.store import system as store_system
from lily.store.db import Database

router = APIRouter(tags=["system"])

# A probe must answer well inside a load balancer's own timeout (often 1-2 s), whatever the database does.
PUBLIC_HEALTH_BUDGET_SECONDS = 0.8
DETAILED_HEALTH_BUDGET_SECONDS = 5.0
_STARTED = time.monotonic()


class HealthStatus(BaseModel):
    status: Literal["ok", "unavailable"]


class DatabaseHealth(BaseModel):
    up: bool
    down_for_seconds: float | None = Field(description="How long this process has seen it down, while it is")
    last_error: str | None = Field(description="The kind of the last connection failure (class and SQLSTATE)")
    outages: int = Field(description="Outages this process has seen since it started")
    last_outage_seconds: float | None = Field(description="How long the last finished outage lasted")


class ProcessHealth(BaseModel):
    pid: int
    version: str
    uptime_seconds: float
    background_tasks: int = Field(description="Pipeline workers and other loops still running in this process")


class HealthDetails(BaseModel):
    status: Literal["ok", "unavailable"]
    database: DatabaseHealth
    process: ProcessHealth
    schema_version: int | None = None
    pipeline: dict[str, Any] | None = Field(
        default=None, description="The log's lag, dead letters and accept→apply latency, over all tenants"
    )


_UNAVAILABLE = {"model": HealthStatus, "description": "The database is unreachable (see `Retry-After`)"}


def _health(status_code: int, body: dict[str, Any], retry_after: int) -> FastJSON:
    headers = {"Retry-After": str(retry_after)} if status_code == 503 else {}
    return FastJSON(body, status_code=status_code, headers=headers)


@router.get(
    "/system/health",
    response_model=HealthStatus,
    responses={**problem_responses(authenticated=False), 503: _UNAVAILABLE},
    summary="Up or down, for load balancers (no credential)",
)
async def health(runtime: RuntimeDep) -> Response:
    db = runtime.db
    up = await _reachable(db, PUBLIC_HEALTH_BUDGET_SECONDS)
    return _health(200 if up else 503, {"status": "ok" if up else "unavailable"}, db.breaker.retry_after_seconds)


@router.get(
    "/system/health/details",
    response_model=HealthDetails,
    responses={**problem_responses(), 503: {"model": HealthDetails, "description": "The database is unreachable"}},
    summary="The deployment's health: database, pipeline over all tenants, this process (operator token)",
)
async def health_details(_: Operator, runtime: RuntimeDep) -> Response:
    db = runtime.db
    figures: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(DETAILED_HEALTH_BUDGET_SECONDS), db.system() as conn:
            figures = await store_system.health(conn)
    except (ServiceUnavailable, TimeoutError):
        figures = None
    breaker = db.breaker
    details = HealthDetails(
        status="ok" if figures is not None else "unavailable",
        database=DatabaseHealth(
            up=figures is not None,
            down_for_seconds=None if breaker.down_since is None else time.monotonic() - breaker.down_since,
            last_error=breaker.last_error,
            outages=breaker.outages,
            last_outage_seconds=breaker.last_outage_seconds,
        ),
        process=ProcessHealth(
            pid=os.getpid(),
            version=__version__,
            uptime_seconds=time.monotonic() - _STARTED,
            background_tasks=sum(1 for task in runtime.background if not task.done()),
        ),
        schema_version=figures["schema_version"] if figures else None,
        pipeline=figures["pipeline"] if figures else None,
    )
    return _health(200 if figures is not None else 503, details.model_dump(mode="json"), breaker.retry_after_seconds)


async def _reachable(db: Database, budget: float) -> bool:
    try:
        db.breaker.check()
        async with asyncio.timeout(budget):
            await db.ping()
    except (ServiceUnavailable, TimeoutError):
        return False
    return True


_metrics_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="MetricsToken",
    description="The operator token (every tenant and this process), or a tenant admin's token (that tenant)",
)


async def metrics_scope(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_metrics_bearer)]
) -> str | None:
    """``None`` for the operator (the whole deployment), else the tenant an admin's token belongs to."""
    if credentials is not None and runtime.settings.is_operator_token(credentials.credentials):
        return None
    principal = await authenticate(runtime, credentials)
    if not principal.role.allows(Role.admin):
        raise Forbidden(f"metrics need the admin role or the operator token; you have {principal.role.value}")
    return principal.tenant_id


_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
    **problem_responses(),
}


@router.get("/metrics", response_class=Response, responses=_METRICS_RESPONSES)
@router.get("/system/metrics", response_class=Response, responses=_METRICS_RESPONSES)
async def metrics(scope: Annotated[str | None, Depends(metrics_scope)], runtime: RuntimeDep) -> Response:
    """Prometheus metrics. A tenant admin's token shows that tenant's figures only; the operator token
    shows every tenant's and this process's counters, histograms and runtime figures."""
    if scope is None:
        body = await pipeline_metrics.render_system(runtime.db)
    else:
        body = await pipeline_metrics.render_tenant(runtime.db, scope)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
