"""``DELETE /tenants/{tenant_id}``: an operator deletes a tenant (``lily admin delete-tenant`` does the same).

From the next request on, none of the tenant's tokens or API keys authenticates (401), in every API
process. Its rows are kept, and its id is never given to a new tenant.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from lily import admin
from lily.api.deps import RequestId, RuntimeDep
from lily.api.errors import problem_responses
from lily.api.operator import Operator

router = APIRouter(prefix="/tenants", tags=["tenants"])


@router.delete("/{tenant_id}", status_code=204, response_class=Response, responses=problem_responses(404))
async def delete_tenant(tenant_id: str, _: Operator, runtime: RuntimeDep, request_id: RequestId) -> Response:
    """Delete the tenant (operator token only)."""
    await admin.delete_tenant(runtime.db, tenant_id, actor="operator", request_id=request_id)
    return Response(status_code=204)
