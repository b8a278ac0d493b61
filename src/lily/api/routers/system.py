"""``/system``: health (no auth: load balancers and orchestrators probe it) and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lily.api.deps import Admin, RuntimeDep
from lily.api.responses import FastJSON
from lily.pipeline import metrics as pipeline_metrics
from lily.store import system as store_system

router = APIRouter(tags=["system"])


@router.get("/system/health")
async def health(runtime: RuntimeDep) -> Response:
    try:
        async with runtime.db.system() as conn:
            status = await store_system.health(conn)
    except Exception as exc:  # any failure to reach the database is "unhealthy", never a 500
        return FastJSON(
            {"status": "unhealthy", "database": "unreachable", "error": type(exc).__name__}, status_code=503
        )
    body: dict[str, Any] = {"status": "ok", "database": "ok", **status}
    return FastJSON(body)


@router.get("/metrics", response_class=Response)
@router.get("/system/metrics", response_class=Response)
async def metrics(principal: Admin, runtime: RuntimeDep) -> Response:
    """Prometheus metrics of this process (admin token required: scrape with a bearer key)."""
    await pipeline_metrics.refresh(runtime.db)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
