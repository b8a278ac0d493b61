"""``POST /lily/v1/connectors/{tenant_id}/{connector_id}/artifacts``: upload a dbt invocation's artifacts.

Multipart, one part per file, each named (field name or file name) ``manifest.json``, ``catalog.json``
or ``run_results.json``; the manifest is required. Each file is bounded (``LILY_DBT_MAX_ARTIFACT_BYTES``)
and checked — JSON, a dbt manifest, translatable — before anything is stored, so a bad upload is
refused with 422 naming the file and the previous upload stays. Then the files replace the previous
upload and a run is queued (202 with its id), in one transaction.

No ``from __future__ import annotations`` here: FastAPI evaluates ``Annotated[..., web.editor]`` while
``web`` is in scope (see :class:`lily.plugins.protocols.WebContext`).
"""

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import UploadFile

from lily.connectors.dbt import artifacts as files
from lily.connectors.dbt.translate import translate
from lily.domain.errors import Invalid, NotFound, PayloadTooLarge
from lily.plugins.protocols import AppRuntime, Caller, WebContext
from lily.store import connector_artifacts
from lily.store import connectors as store

_BODY = {
    "requestBody": {
        "required": True,
        "description": "One part per dbt artifact, named manifest.json (required), catalog.json, run_results.json",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [files.MANIFEST],
                    "properties": {name: {"type": "string", "format": "binary"} for name in files.FILES},
                }
            }
        },
    }
}


class ArtifactsAccepted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connector_id: UUID
    run_id: UUID
    state: str
    files: dict[str, int]  # name → bytes
    relations: int  # relations the artifacts describe (what the run will write)


def _not_found(connector_id: Any) -> NotFound:
    return NotFound(f"connector {str(connector_id)[:80]!r} does not exist")


async def _read(request: Request, max_bytes: int) -> dict[str, bytes]:
    form = await request.form(max_files=len(files.FILES), max_fields=0)
    out: dict[str, bytes] = {}
    try:
        for key, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise Invalid("every part must be a file", field=key[:100])
            name = key if key in files.FILES else (value.filename or "").rsplit("/", 1)[-1]
            if name not in files.FILES:
                raise Invalid(f"a part must be one of {', '.join(files.FILES)}", field=key[:100])
            if name in out:
                raise Invalid("sent twice", field=name)
            body = await value.read(max_bytes + 1)
            if len(body) > max_bytes:
                raise PayloadTooLarge(f"{name} is larger than {max_bytes} bytes")
            out[name] = body
    finally:
        await form.close()
    return out


def build_router(web: WebContext) -> APIRouter:
    router = APIRouter(prefix="/lily/v1/connectors", tags=["connectors"])

    @router.post(
        "/{tenant_id}/{connector_id}/artifacts",
        status_code=202,
        response_model=ArtifactsAccepted,
        responses=web.problem_responses(404, 413),
        openapi_extra=_BODY,
        summary="Upload dbt artifacts to a dbt connector and start a run",
    )
    async def upload(
        tenant_id: str,
        connector_id: UUID,
        request: Request,
        caller: Annotated[Caller, web.editor],
        runtime: Annotated[AppRuntime, web.runtime],
    ) -> ArtifactsAccepted:
        if tenant_id != caller.tenant_id:
            raise _not_found(connector_id)
        async with runtime.db.tenant(tenant_id) as conn:
            row = await store.get(conn, tenant_id, connector_id)
        if row is None or row["kind"] != "dbt":
            raise _not_found(connector_id)
        body = await _read(request, runtime.settings.dbt_max_artifact_bytes)
        found = files.from_files(body, field="body")
        namespace = str((row["config"] or {}).get("namespace") or "")
        relations = len(translate(found.manifest, found.catalog, found.run_results, namespace).objects)
        async with runtime.db.tenant(tenant_id) as conn:
            if await store.get_for_update(conn, tenant_id, connector_id) is None:
                raise _not_found(connector_id)  # deleted meanwhile
            await connector_artifacts.replace(conn, tenant_id, connector_id, body, caller.actor)
            run, _ = await store.request_run(conn, tenant_id, connector_id, caller.actor)
        return ArtifactsAccepted(
            connector_id=connector_id,
            run_id=run["run_id"],
            state=run["state"],
            files={name: len(data) for name, data in body.items()},
            relations=relations,
        )

    return router
