"""``/api/v1/lineage``: Marquez's OpenLineage endpoints, so every OpenLineage producer can feed Lily.

Mounted at ``/api/v1`` (not under ``/lily/v1``) because producers are configured with a base URL and
append Marquez's path themselves. The routes are built by :func:`build_router` from the API's
:class:`~lily.plugins.protocols.WebContext` (authentication, runtime, request id), so this connector
imports nothing from ``lily.api``; that is also why this module does not use postponed annotations:
FastAPI evaluates the routes' ``Annotated[..., web.editor]`` while ``web`` is in scope.
Authentication is a Lily API key (or JWT) as bearer token: what the ``openlineage-python`` client's
``auth: api_key`` sends.

A write answers ``201`` with an empty body once the Lily events are durably in the log, as Marquez
answers once it has stored the event; the pipeline applies them right after (poll ``/lily/v1/system/health``
or an asset to read your write). All Lily events of one request — one OpenLineage event, or a whole batch —
are appended in one transaction: a request is recorded whole or not at all.
"""

import zlib
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request, Response

from lily.bulk.inflate import read_json  # bounded, incremental gunzip + JSON (area 6)
from lily.connectors.openlineage.events import parse_batch, parse_event
from lily.connectors.openlineage.graph import Link, candidate_names, identity, marquez_graph
from lily.connectors.openlineage.translate import JOB, translate
from lily.domain.assets import Asset, to_document
from lily.domain.errors import Invalid, LilyError, NotFound, PayloadTooLarge
from lily.domain.lineage import DEFAULT_NODE_LIMIT
from lily.domain.storable import NO_NUL
from lily.plugins.protocols import AppRuntime, Caller, WebContext
from lily.store import assets as store_assets
from lily.store import lineage as store_lineage
from lily.store import openlineage as store_ol

MARQUEZ_DEFAULT_DEPTH = 20  # Marquez's default; Lily clamps it to its own cap (domain.lineage.MAX_DEPTH)
# The size of one event, plain or once inflated (a bound that also stops zip bombs). A batch may be as
# large as a bulk load (LILY_MAX_BULK_BODY_BYTES), which BodyLimitMiddleware enforces on the wire.
MAX_INFLATED_BYTES = 8 * 1024 * 1024
# A job's graph is walked from each dataset it reads or writes; past this many, from the first ones only.
MAX_JOB_STARTS = 50
# Marquez's graph shape, for the OpenAPI document (this module does not import lily.api's models).
_MARQUEZ_GRAPH = {
    "description": "The lineage graph in Marquez's shape",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["graph"],
                "properties": {
                    "graph": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "type", "data", "inEdges", "outEdges"],
                            "properties": {
                                "id": {"type": "string"},
                                "type": {"type": "string", "enum": ["DATASET", "JOB"]},
                                "data": {"type": "object"},
                                "inEdges": {"type": "array", "items": {"type": "object"}},
                                "outEdges": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                    }
                },
            }
        }
    },
}

# The body is read raw (to decompress it under a bound first), so describe it for the OpenAPI document.
_EVENT_BODY = {
    "requestBody": {
        "required": True,
        "description": "An OpenLineage RunEvent, DatasetEvent or JobEvent; may be sent with Content-Encoding: gzip",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "A JSON array of OpenLineage events; may be sent with Content-Encoding: gzip",
        "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
    }
}


class MalformedBody(LilyError):
    status, type_slug, title = 400, "malformed-json", "Malformed JSON"


class UnsupportedEncoding(LilyError):
    status, type_slug, title = 415, "unsupported-media-type", "Unsupported media type"


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing (413) once the output passes ``limit``: a few KiB of gzip can
    expand to gigabytes, so the output is bounded while it is produced, never after."""
    out = bytearray()
    rest = data
    try:
        while rest:  # a gzip stream may hold several members, one after the other
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise PayloadTooLarge(f"the decompressed body exceeds {limit} bytes", limit=limit)
            if not inflater.eof:
                raise MalformedBody("the gzip body is truncated")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise MalformedBody(f"the body is not valid gzip: {exc}") from None
    return bytes(out)


async def _json_body(request: Request, limit: int) -> Any:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and "json" not in content_type:
        raise UnsupportedEncoding(f"send application/json, not {content_type}")
    # The raw body is already bounded by BodyLimitMiddleware; the decompressed one by gunzip.
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip"):  # x-gzip: the older name, which RFC 9110 asks servers to accept
        raw = gunzip(raw, limit)
    elif encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    elif len(raw) > limit:
        raise PayloadTooLarge(f"the event exceeds {limit} bytes", limit=limit)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from None


def _pick(rest: str, names: list[str], found: dict[str, Asset], want_job: bool) -> Asset | None:
    """The live asset a node id names: of the right kind, and the one whose OpenLineage identity
    spells the id exactly when several splits of ``ns:name`` exist."""
    matches = [found[n] for n in names if n in found and found[n].live and (found[n].type == JOB) == want_job]
    for asset in matches:
        namespace, name = identity(to_document(asset))
        if f"{namespace}:{name}" == rest:
            return asset
    return matches[0] if matches else None


def build_router(web: WebContext) -> APIRouter:
    """Marquez's lineage endpoints, authenticated and documented as Lily's own routes are."""
    router = APIRouter(prefix="/api/v1", tags=["openlineage"])
    ViewerDep = Annotated[Caller, web.viewer]
    EditorDep = Annotated[Caller, web.editor]
    RuntimeDep = Annotated[AppRuntime, web.runtime]
    RequestIdDep = Annotated[str, web.request_id]

    @router.post(
        "/lineage",
        status_code=201,
        response_class=Response,
        responses={
            201: {"description": "Recorded (empty body, as Marquez answers)"},
            **web.problem_responses(400, 413, 415),
        },
        openapi_extra=_EVENT_BODY,
    )
    async def record_event(
        request: Request, principal: EditorDep, runtime: RuntimeDep, request_id: RequestIdDep
    ) -> Response:
        """Take one OpenLineage event (RunEvent, DatasetEvent or JobEvent), plain or gzip-compressed."""
        event = parse_event(await read_json(request, max_bytes=MAX_INFLATED_BYTES, max_item_bytes=MAX_INFLATED_BYTES))
        lily_events = translate(event, principal.tenant_id, principal.actor, request_id)
        # Every asset an event records (datasets, the job) is written, so access policies apply to each.
        await web.check_writes(runtime, principal, [e.subject for e in lily_events])
        await runtime.writer.append_many(principal.tenant_id, lily_events)
        return Response(status_code=201)

    @router.post(
        "/lineage/batch",
        status_code=201,
        response_class=Response,
        responses={201: {"description": "All recorded (empty body)"}, **web.problem_responses(400, 413, 415)},
        openapi_extra=_BATCH_BODY,
    )
    async def record_batch(
        request: Request, principal: EditorDep, runtime: RuntimeDep, request_id: RequestIdDep
    ) -> Response:
        """Take a JSON array of OpenLineage events: every one is validated first, and all are recorded
        in one transaction, or none (the error names the index of each bad one)."""
        events = parse_batch(
            await read_json(
                request,
                max_bytes=runtime.settings.max_bulk_body_bytes,
                max_item_bytes=MAX_INFLATED_BYTES,
                array=True,
            )
        )
        lily_events = []
        for i, event in enumerate(events):
            try:
                lily_events += translate(event, principal.tenant_id, principal.actor, request_id)
            except Invalid as err:
                errors = [{**e, "field": f"[{i}].{e['field']}"} for e in err.extra.get("errors", [])]
                raise Invalid(f"event [{i}]: {err.detail}; nothing was applied", errors=errors, indexes=[i]) from None
        await web.check_writes(runtime, principal, [e.subject for e in lily_events])
        await runtime.writer.append_many(principal.tenant_id, lily_events)
        return Response(status_code=201)

    @router.get("/lineage", responses={200: _MARQUEZ_GRAPH, **web.problem_responses(404)})
    async def marquez_lineage(
        principal: ViewerDep,
        runtime: RuntimeDep,
        node_id: Annotated[
            str,
            Query(
                alias="nodeId",
                min_length=1,
                max_length=2100,
                pattern=NO_NUL,
                description="dataset:{namespace}:{name} or job:{namespace}:{name}",
            ),
        ],
        depth: Annotated[
            int, Query(ge=0, description="hops; capped at Lily's lineage depth cap")
        ] = MARQUEZ_DEFAULT_DEPTH,
    ) -> Response:
        """The lineage around a dataset or job in Marquez's shape: ``{"graph": [{id, type, data, inEdges,
        outEdges}]}``, both directions, depth and node count capped as for ``/lily/v1/metadata/lineage``."""
        kind, _, rest = node_id.partition(":")
        if kind not in ("dataset", "job") or ":" not in rest:
            raise Invalid("nodeId must be dataset:{namespace}:{name} or job:{namespace}:{name}", field="nodeId")
        tenant_id = principal.tenant_id
        async with runtime.db.tenant(tenant_id) as conn:
            names = candidate_names(rest)
            root = _pick(rest, names, await store_assets.current_by_names(conn, tenant_id, names), kind == "job")
            if root is None:
                raise NotFound(f"node {node_id} not found")
            root_id: UUID = root.asset_id
            links: set[Link] = set()
            ids: set[UUID] = {root_id}
            starts = [root_id]
            if kind == "job":
                # A job is a process on edges, not an endpoint: walk from the datasets it reads and writes.
                carried = await store_ol.process_edges(conn, tenant_id, root_id, DEFAULT_NODE_LIMIT)
                links.update((up, down, root_id) for up, down in carried)
                starts = list(dict.fromkeys(a for pair in carried for a in pair))[:MAX_JOB_STARTS]
            for start in starts:
                walked = await store_lineage.traverse(conn, tenant_id, start, "both", depth, DEFAULT_NODE_LIMIT)
                ids.update(n.asset_id for n in walked.nodes)
                ids.update(e.process_id for e in walked.edges if e.process_id is not None)
                links.update((e.upstream_id, e.downstream_id, e.process_id) for e in walked.edges)
            rows = await store_ol.assets_by_ids(conn, tenant_id, list(ids))
        return web.json_response(marquez_graph(rows, links))

    return router
