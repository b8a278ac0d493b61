"""``/metadata/bulk``: stream many assets in one request; follow the job's progress."""

from __future__ import annotations

import contextlib
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request

from lily.api import access
from lily.api.deps import RequestId, RuntimeDep, Viewer
from lily.api.errors import problem_responses
from lily.api.models import BulkReceipt, BulkStatus, IdempotencyKeyHeader
from lily.api.responses import FastJSON
from lily.bulk import ingest
from lily.bulk.parse import is_ndjson
from lily.domain.errors import NotFound

# Listed before ``metadata.item_router`` so /metadata/bulk is never taken for /metadata/{asset_id}.
router = APIRouter(prefix="/metadata/bulk", tags=["bulk"])

STATUS_PATH = "/lily/v1/metadata/bulk/status/{}"

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            # Items are validated one by one and an invalid one is reported in the job (with its index)
            # without refusing the others, so the body's schema is honest only with any item allowed;
            # a valid item is the body of POST /metadata (AssetIn).
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {
                        "description": "An AssetIn (the body of POST /metadata). Each item is validated on its own: "
                        "an invalid one is reported in the job's errors with its index and does not stop the others."
                    },
                }
            },
            "application/x-ndjson": {"schema": {"type": "string", "description": "one AssetIn per line"}},
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=BulkReceipt,
    responses=problem_responses(400, 408, 409, 413, 415),
    openapi_extra=_BODY_DOC,
)
async def submit(
    request: Request,
    principal: access.Writer,
    runtime: RuntimeDep,
    request_id: RequestId,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FastJSON:
    """Accept a JSON array or NDJSON of assets (as for ``POST /metadata``); 202 with the job id.

    The body is read as a stream. Invalid items are refused one by one and reported in the job's
    status; the valid ones go through the event log. A body over the size limit applies nothing (413).
    """
    admission = access.BulkAdmission(principal)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        await admission.load(conn)
    async with contextlib.AsyncExitStack() as stack:
        if admission.needed():
            # Items are checked on a transaction of their own (the job's is busy staging them).
            admission.conn = await stack.enter_async_context(runtime.db.tenant(principal.tenant_id))
        # A bulk slot (deployment-wide, a fair share per tenant) is taken inside; 429 with Retry-After when none.
        receipt = await ingest.receive(
            runtime.db,
            runtime.settings,
            tenant_id=principal.tenant_id,
            actor=principal.actor,
            request_id=request_id,
            chunks=request.stream(),
            ndjson=is_ndjson(request.headers.get("content-type")),
            idempotency_key=request.headers.get("idempotency-key"),
            admit=admission if admission.needed() else None,
        )
    url = STATUS_PATH.format(receipt.job_id)
    return FastJSON(
        {
            "job_id": str(receipt.job_id),
            "status_url": url,
            "total": receipt.total,
            "rejected": receipt.rejected,
            "replayed": receipt.replayed,
        },
        status_code=202,
        headers={"Location": url},
    )


@router.get("/status/{job_id}", response_model=BulkStatus, responses=problem_responses(404))
async def job_status(
    job_id: UUID,
    principal: Viewer,
    runtime: RuntimeDep,
    max_errors: Annotated[int, Query(ge=0, le=100)] = 20,
    wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for the job to finish")] = 0,
) -> FastJSON:
    """The job's state (queued, running, succeeded, partial, failed), counts and first errors by index."""
    if wait:
        # Existence is checked below; a foreign job id simply has no events to wait on here (RLS).
        await ingest.wait_done(runtime.db, runtime.writer.waiter, principal.tenant_id, job_id, wait)
    result = await ingest.status(runtime.db, principal.tenant_id, job_id, max_errors=max_errors)
    if result is None:
        raise NotFound(f"bulk job {job_id} does not exist")
    return FastJSON(result)
