"""``/tenants/{tenant_id}``: a tenant's configuration and its inbound/outbound sources.

A caller only ever sees its own tenant; any other id answers 404 exactly as an unknown one does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from lily.api.deps import Admin, Principal, RequestId, RuntimeDep, Viewer
from lily.api.errors import problem_responses
from lily.api.models import TenantConfigDocument, TenantSources
from lily.domain import audit as audit_rules
from lily.domain import connectors as connector_rules
from lily.domain.errors import Invalid, NotFound
from lily.domain.round_trip import TENANT_READ_ONLY, TenantConfigDocumentIn, changed_read_only
from lily.domain.tenants import TenantConfig
from lily.store import audit, identity
from lily.store import connectors as store_connectors

router = APIRouter(prefix="/tenants", tags=["tenants"])


def _own(principal: Principal, tenant_id: str) -> None:
    if tenant_id != principal.tenant_id:
        raise NotFound(f"tenant {tenant_id} does not exist")


@router.get("/{tenant_id}/config", response_model=TenantConfigDocument, responses=problem_responses(404))
async def config(tenant_id: str, principal: Viewer, runtime: RuntimeDep) -> dict[str, Any]:
    _own(principal, tenant_id)
    async with runtime.db.tenant(tenant_id) as conn:
        row = await identity.get_tenant(conn, tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    return _config_document(row)


def _config_document(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant_id": row["tenant_id"],
        "name": row["name"],
        "created_at": row["created_at"],
        "config": TenantConfig.of(row["config"]).model_dump(),
    }


@router.put("/{tenant_id}/config", response_model=TenantConfigDocument, responses=problem_responses(404))
async def replace_config(
    tenant_id: str, body: TenantConfigDocumentIn, principal: Admin, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Replace the tenant's configuration (admin). Fields left out return to their defaults. The body
    is the configuration, or the document ``GET`` returned (read-only members unchanged, else 422)."""
    _own(principal, tenant_id)
    config = body.effective()
    async with runtime.db.tenant(tenant_id) as conn:
        before = await identity.get_tenant(conn, tenant_id)
        if before is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        changed = changed_read_only(body, before, TENANT_READ_ONLY)
        if changed:
            raise Invalid("; ".join(e["message"] for e in changed), errors=changed)
        entry = audit_rules.config_replaced(
            TenantConfig.of(before["config"]).model_dump(),
            config.model_dump(),
            actor=principal.actor,
            request_id=request_id,
            at=datetime.now(UTC),
        )
        if entry is None:  # the same configuration again: nothing to write, nothing to audit
            return _config_document(before)
        row = await identity.set_tenant_config(conn, tenant_id, config.model_dump())
        await audit.write_audit(conn, tenant_id, [entry])
    return _config_document(row)


@router.get("/{tenant_id}/sources", response_model=TenantSources, responses=problem_responses(404))
async def sources(tenant_id: str, principal: Viewer, runtime: RuntimeDep) -> dict[str, Any]:
    """What feeds the tenant (API keys, connector instances with their health) and what it feeds
    (notification channels with their delivery health)."""
    _own(principal, tenant_id)
    async with runtime.db.tenant(tenant_id) as conn:
        keys = await identity.list_api_keys(conn, tenant_id)
        instances = await store_connectors.list_all(conn, tenant_id)
        channels = await store_connectors.channels_with_health(conn, tenant_id)
    inbound = [
        {"kind": "api_key", "id": k["key_id"], "name": k["name"], "role": k["role"], "created_at": k["created_at"]}
        for k in keys
    ]
    inbound += [
        {
            "kind": "connector",
            "type": c["kind"],
            "id": str(c["connector_id"]),
            "name": c["name"],
            "active": c["active"],
            "created_at": c["created_at"],
            "health": connector_rules.health_of(c),
        }
        for c in instances
    ]
    outbound = [
        {
            "kind": "channel",
            "type": c["type"],
            "id": str(c["channel_id"]),
            "name": c["name"],
            "active": c["enabled"],
            "created_at": c["created_at"],
            "health": {
                "state": "disabled" if not c["enabled"] else ("failing" if c["dead"] or c["last_error"] else "healthy"),
                "disabled_reason": c["disabled_reason"],
                "pending": c["pending"],
                "dead": c["dead"],
                "last_delivered_at": c["last_delivered_at"],
                "last_error": c["last_error"],
                "last_failed_at": c["last_failed_at"],
            },
        }
        for c in channels or []
    ]
    return {
        "tenant_id": tenant_id,
        "inbound": inbound,
        "outbound": outbound,
        "channels_installed": channels is not None,
    }
