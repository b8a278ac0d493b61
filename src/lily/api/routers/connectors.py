"""``/connectors/{tenant_id}``: the tenant's connector instances, their health and runs (admin).

A ``{tenant_id}`` other than the caller's answers 404 exactly as an unknown one does. ``config`` is
validated with the connector type's own ``Config`` (422 naming ``config.<field>``); its secret fields
(``SecretStr`` in the model: a DSN, a password) are sealed at rest, shown as ``null``, and kept when a
``PUT`` leaves them out. Runs happen in the scheduler (the ``connector_polls`` job); ``POST …/run``
queues one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lily.api import pagination
from lily.api.deps import Admin, Principal, RuntimeDep
from lily.api.errors import problem_responses
from lily.api.runtime import Runtime
from lily.crypto import Keyring, merge_secrets, redacted, secret_fields, split_secrets
from lily.domain import connectors as rules
from lily.domain.errors import Conflict, Invalid, NotFound
from lily.domain.events import NewEvent
from lily.domain.ids import is_uuid_text
from lily.plugins.protocols import Connector
from lily.scheduler.targets import TargetGuard
from lily.store import connectors as store
from lily.store import log as store_log

router = APIRouter(prefix="/connectors", tags=["connectors"])

RUN_PATH = "/lily/v1/connectors/{}/{}/runs/{}"
PASSIVATE_CHUNK = 1000
REMOVED_TIMEOUT_SECONDS = 10.0
log = logging.getLogger(__name__)
TenantPath = Annotated[str, Path(min_length=1, max_length=63)]


class Health(BaseModel):
    state: Literal["never_run", "running", "queued", "healthy", "failing", "disabled"]
    last_run_id: UUID | None
    last_run_at: datetime | None = Field(description="When the last finished run ended")
    last_outcome: Literal["succeeded", "failed"] | None
    last_error: str | None = Field(description="The last run's error, when it failed")
    last_success_at: datetime | None
    lag_seconds: float | None = Field(description="Seconds since the last successful run ended (null: none yet)")
    consecutive_failures: int
    next_run_at: datetime | None
    detail: dict[str, Any] | None = Field(description="What the connector reports of itself (e.g. a CDC slot's lag)")


class ConnectorOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    connector_id: UUID
    tenant_id: str
    name: str
    type: str
    config: dict[str, Any] = Field(description="Secret fields are always null (write-only)")
    secrets_set: list[str] = Field(description="The secret fields that hold a value")
    schedule: str | dict[str, int] | None
    enabled: bool
    created_at: datetime
    updated_at: datetime
    health: Health


class ConnectorDocumentIn(rules.ConnectorIn):
    """``PUT``: the instance, or the document ``GET`` returned (read-only members are ignored when equal)."""

    # Not strict (the model is): ids and times arrive as JSON strings.
    connector_id: UUID | None = Field(default=None, strict=False, description="Read-only")
    tenant_id: str | None = Field(default=None, description="Read-only")
    secrets_set: list[str] | None = Field(default=None, description="Read-only")
    created_at: datetime | None = Field(default=None, strict=False, description="Read-only")
    updated_at: datetime | None = Field(default=None, strict=False, description="Read-only")
    health: dict[str, Any] | None = Field(default=None, description="Read-only")


class ConnectorsPage(BaseModel):
    items: list[ConnectorOut]
    next_cursor: str | None


class RunOut(BaseModel):
    run_id: UUID
    connector_id: UUID
    trigger: Literal["schedule", "manual", "retry"]
    state: rules.RunState
    requested_by: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    seen: int
    created: int
    updated: int
    unchanged: int
    removed: int
    events: int = Field(description="Events the run appended to the log")
    errors: list[str] = Field(description="Per-object problems of a run that still succeeded")
    error: str | None = Field(description="Why the run failed")
    detail: dict[str, Any]
    status_url: str


class RunsPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class RunRequested(RunOut):
    queued: bool = Field(description="False when a run-now request was already waiting (this is that one)")


def _own(principal: Principal, tenant_id: str) -> None:
    if tenant_id != principal.tenant_id:
        raise NotFound(f"connector registry of tenant {tenant_id} does not exist")


def _missing(connector_id: UUID) -> NotFound:
    return NotFound(f"connector {connector_id} does not exist")


def _connectors(request: Request) -> Mapping[str, Connector]:
    connectors: Mapping[str, Connector] = request.app.state.plugins.connectors
    return connectors


def keyring(request: Request, runtime: Runtime) -> Keyring:
    ring: Keyring | None = getattr(request.app.state, "keyring", None)
    if ring is None:
        ring = Keyring.from_settings(runtime.settings)
        request.app.state.keyring = ring
    return ring


def _plugin(request: Request, kind: str) -> Connector:
    plugin = _connectors(request).get(kind)
    if plugin is None or getattr(plugin, "run", None) is None:
        runnable = sorted(n for n, p in _connectors(request).items() if getattr(p, "run", None) is not None)
        raise Invalid(f"unknown connector type {kind!r}; installed: {', '.join(runnable) or 'none'}", field="type")
    return plugin


def _validated(plugin: Connector, raw: Mapping[str, Any]) -> BaseModel:
    try:
        return plugin.Config.model_validate(dict(raw))
    except ValidationError as exc:
        errors = []
        secret = secret_fields(plugin.Config)
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()))
            # A secret's value must not come back in the message (pydantic may quote the input).
            message = str(e.get("msg", "invalid"))
            errors.append({"field": f"config.{where}" if where else "config", "message": message})
            if where.split(".", 1)[0] in secret:
                errors[-1]["message"] = "invalid value"
        raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors) from None


def _document(row: Mapping[str, Any], plugin: Connector | None, secrets: list[str]) -> dict[str, Any]:
    config = redacted(plugin.Config, row["config"]) if plugin is not None else dict(row["config"])
    health = rules.health_of(row)
    return {
        "connector_id": row["connector_id"],
        "tenant_id": row["tenant_id"],
        "name": row["name"],
        "type": row["kind"],
        "config": config,
        "secrets_set": sorted(secrets),
        "schedule": rules.shown_schedule(row["schedule"]),
        "enabled": row["active"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "health": health,
    }


def _secret_names(ring: Keyring, sealed: str | None) -> list[str]:
    return sorted(ring.open(sealed)) if sealed else []


def _name_taken(name: str) -> Conflict:
    detail = f"a connector named {name!r} exists already"
    return Conflict(detail, errors=[{"field": "name", "message": detail}])


def _run(tenant_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    return {**row, "status_url": RUN_PATH.format(tenant_id, row["connector_id"], row["run_id"])}


def _first_due(body: rules.ConnectorIn) -> datetime | None:
    schedule = rules.stored_schedule(body.schedule)
    return rules.next_due(schedule, datetime.now(UTC)) if body.enabled else None


@router.post("/{tenant_id}", status_code=201, response_model=ConnectorOut, responses=problem_responses(404, 409))
async def create_connector(
    tenant_id: TenantPath, body: rules.ConnectorIn, request: Request, principal: Admin, runtime: RuntimeDep
) -> dict[str, Any]:
    """Register a connector instance (admin). Its first scheduled run is due one interval from now;
    ``POST …/run`` runs it at once."""
    _own(principal, tenant_id)
    plugin = _plugin(request, body.type)
    config = _validated(plugin, body.config)
    ring = keyring(request, runtime)
    public, hidden = split_secrets(config)
    sealed = ring.seal(hidden) if hidden else None
    async with runtime.db.tenant(tenant_id) as conn:
        connector_id = await store.create(
            conn,
            tenant_id,
            name=body.name,
            kind=body.type,
            config=public,
            sealed=sealed,
            schedule=rules.stored_schedule(body.schedule),
            active=body.enabled,
            next_run_at=_first_due(body),
        )
        if connector_id is None:
            raise _name_taken(body.name)
        row = await store.get(conn, tenant_id, connector_id)
    assert row is not None
    return _document(row, plugin, sorted(hidden))


@router.get("/{tenant_id}", response_model=ConnectorsPage, responses=problem_responses(404))
async def list_connectors(
    tenant_id: TenantPath,
    request: Request,
    principal: Admin,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: pagination.Cursor = None,
) -> dict[str, Any]:
    """The tenant's connector instances with their health, by id."""
    _own(principal, tenant_id)
    after = pagination.decode(cursor, valid=is_uuid_text)
    ring = keyring(request, runtime)
    async with runtime.db.tenant(tenant_id) as conn:
        rows = await store.list_page(conn, tenant_id, limit + 1, UUID(after) if after else None)
    plugins = _connectors(request)
    docs = [_document(r, plugins.get(r["kind"]), _secret_names(ring, r["config_sealed"])) for r in rows]
    return pagination.page(docs, limit, lambda d: str(d["connector_id"]))


async def _get_row(runtime: Runtime, tenant_id: str, connector_id: UUID) -> dict[str, Any]:
    async with runtime.db.tenant(tenant_id) as conn:
        row = await store.get(conn, tenant_id, connector_id)
    if row is None:
        raise _missing(connector_id)
    return row


@router.get("/{tenant_id}/{connector_id}", response_model=ConnectorOut, responses=problem_responses(404))
async def get_connector(
    tenant_id: TenantPath, connector_id: UUID, request: Request, principal: Admin, runtime: RuntimeDep
) -> dict[str, Any]:
    """One instance with its health: the last run, its outcome and error, the lag since the last success."""
    _own(principal, tenant_id)
    row = await _get_row(runtime, tenant_id, connector_id)
    ring = keyring(request, runtime)
    return _document(row, _connectors(request).get(row["kind"]), _secret_names(ring, row["config_sealed"]))


@router.put("/{tenant_id}/{connector_id}", response_model=ConnectorOut, responses=problem_responses(404, 409))
async def replace_connector(
    tenant_id: TenantPath,
    connector_id: UUID,
    body: ConnectorDocumentIn,
    request: Request,
    principal: Admin,
    runtime: RuntimeDep,
) -> dict[str, Any]:
    """Replace an instance (admin). Secret fields left out or ``null`` keep their stored values; the
    type cannot change (register a new instance instead)."""
    _own(principal, tenant_id)
    if body.connector_id is not None and body.connector_id != connector_id:
        raise Invalid("connector_id is read-only", field="connector_id")
    ring = keyring(request, runtime)
    async with runtime.db.tenant(tenant_id) as conn:
        row = await store.get_for_update(conn, tenant_id, connector_id)
        if row is None:
            raise _missing(connector_id)
        if body.type != row["kind"]:
            raise Invalid(f"type is {row['kind']!r} and cannot change", field="type")
        plugin = _plugin(request, body.type)
        stored = ring.open(row["config_sealed"]) if row["config_sealed"] else {}
        config = _validated(plugin, merge_secrets(plugin.Config, body.config, stored))
        public, hidden = split_secrets(config)
        sealed = ring.seal(hidden) if hidden else None
        ok = await store.update(
            conn,
            tenant_id,
            connector_id,
            name=body.name,
            config=public,
            sealed=sealed,
            schedule=rules.stored_schedule(body.schedule),
            active=body.enabled,
            next_run_at=_first_due(body),
        )
        if not ok:
            raise _name_taken(body.name)
        fresh = await store.get(conn, tenant_id, connector_id)
    assert fresh is not None
    return _document(fresh, plugin, sorted(hidden))


@router.delete(
    "/{tenant_id}/{connector_id}", status_code=204, response_class=Response, responses=problem_responses(404)
)
async def delete_connector(
    tenant_id: TenantPath, connector_id: UUID, principal: Admin, runtime: RuntimeDep, request: Request
) -> Response:
    """Remove an instance and its runs (admin). The assets it kept up to date stay, but become passive
    (``has_active_source`` false), through the event log, so downstream propagation treats them as
    having no source of their own."""
    _own(principal, tenant_id)
    source = rules.source_of(str(connector_id))
    async with runtime.db.tenant(tenant_id) as conn:
        row = await store.load_for_run(conn, tenant_id, connector_id)
        if not await store.delete(conn, tenant_id, connector_id):
            raise _missing(connector_id)
        names = await store.owned_assets(conn, tenant_id, source)
        # In the same transaction: an instance is never gone while its assets still look fed.
        for start in range(0, len(names), PASSIVATE_CHUNK):
            events = [
                NewEvent(tenant_id, name, rules.SOURCE_DETACHED, {"source": source}, principal.actor, None, source)
                for name in names[start : start + PASSIVATE_CHUNK]
            ]
            await store_log.append(conn, events, runtime.settings.partitions)
    if row is not None:
        await _removed(request, runtime, row)
    return Response(status_code=204)


async def _removed(request: Request, runtime: Runtime, row: Mapping[str, Any]) -> None:
    """Tell the plugin its instance is gone (optional ``removed(config, state, check_target)``: a CDC
    connector drops its replication slot). Best effort, bounded, after the delete committed: the answer
    is 204 whatever the source says, and the error is logged without the config."""
    plugin = _connectors(request).get(row["kind"])
    hook = getattr(plugin, "removed", None)
    if plugin is None or hook is None:
        return
    try:
        opened = keyring(request, runtime).open(row["config_sealed"]) if row["config_sealed"] else {}
        config = plugin.Config.model_validate({**row["config"], **opened})
        guard = TargetGuard.from_settings(runtime.settings, runtime.db.url)
        await asyncio.wait_for(hook(config, dict(row["state"] or {}), guard.check), timeout=REMOVED_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning(
            "connector %s (%s) was deleted; its clean-up failed: %s",
            row["connector_id"],
            row["kind"],
            type(exc).__name__,
        )


@router.post(
    "/{tenant_id}/{connector_id}/run", status_code=202, response_model=RunRequested, responses=problem_responses(404)
)
async def run_connector(
    tenant_id: TenantPath, connector_id: UUID, principal: Admin, runtime: RuntimeDep
) -> dict[str, Any]:
    """Queue a run now (admin); the scheduler starts it within seconds. Asking again while one waits
    returns the waiting run."""
    _own(principal, tenant_id)
    async with runtime.db.tenant(tenant_id) as conn:
        if await store.get_for_update(conn, tenant_id, connector_id) is None:
            raise _missing(connector_id)
        run, queued = await store.request_run(conn, tenant_id, connector_id, principal.actor)
    return {**_run(tenant_id, run), "queued": queued}


def _run_position(position: Any) -> bool:
    return pagination.time_and_id(position)


@router.get("/{tenant_id}/{connector_id}/runs", response_model=RunsPage, responses=problem_responses(404))
async def list_runs(
    tenant_id: TenantPath,
    connector_id: UUID,
    principal: Admin,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: pagination.Cursor = None,
) -> dict[str, Any]:
    """The instance's runs, newest first, with their counts and errors."""
    _own(principal, tenant_id)
    position = pagination.decode(cursor, valid=_run_position)
    before = (datetime.fromisoformat(position[0]), UUID(position[1])) if position else None
    async with runtime.db.tenant(tenant_id) as conn:
        if await store.get(conn, tenant_id, connector_id) is None:
            raise _missing(connector_id)
        rows = await store.list_runs(conn, tenant_id, connector_id, limit + 1, before)
    items = [_run(tenant_id, r) for r in rows]
    return pagination.page(items, limit, lambda r: [r["created_at"].isoformat(), str(r["run_id"])])


@router.get("/{tenant_id}/{connector_id}/runs/{run_id}", response_model=RunOut, responses=problem_responses(404))
async def get_run(
    tenant_id: TenantPath, connector_id: UUID, run_id: UUID, principal: Admin, runtime: RuntimeDep
) -> dict[str, Any]:
    _own(principal, tenant_id)
    async with runtime.db.tenant(tenant_id) as conn:
        row = await store.get_run(conn, tenant_id, run_id)
    if row is None or row["connector_id"] != connector_id:
        raise NotFound(f"run {run_id} does not exist")
    return _run(tenant_id, row)
