"""RFC 9457 problem+json for every error, with the offending fields named for validation errors.

Routes document the problems they answer with :func:`problem_responses`; :func:`install` maps every
error to a problem, and puts the ``Problem`` schema into the OpenAPI document.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lily.api.responses import FastJSON
from lily.domain.errors import LilyError
from lily.domain.storable import Unstorable

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
TYPE_BASE = "https://lily.dev/problems/"


class ProblemField(BaseModel):
    """One offending field of a validation problem."""

    field: str | None = Field(description="Where it is: `owners[0]`, `attributes.a.b`, `cursor`, `Idempotency-Key`")
    message: str
    in_: str | None = Field(default=None, alias="in", description="body, query, path or header")


class Problem(BaseModel):
    """An RFC 9457 problem. Problems may carry more members (``retry_after_seconds``, ``limit``, …)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A stable URI naming the kind of problem")
    title: str
    status: int
    detail: str
    errors: list[ProblemField] | None = Field(default=None, description="Validation problems: each offending field")


_DESCRIPTIONS = {
    400: "Malformed request body",
    401: "Missing, invalid, expired or revoked credentials",
    403: "The caller's role does not allow this",
    404: "No such resource in the caller's tenant",
    405: "Method not allowed (the `Allow` header lists the allowed ones)",
    408: "The request body did not arrive in time",
    409: "Conflicts with the current state",
    412: "If-Match names a version that is no longer current",
    413: "The body exceeds the size limit",
    415: "Unsupported content type or encoding",
    422: "Invalid request: `errors` names each offending field",
    429: "Too many requests (see `Retry-After`)",
    503: "Temporarily unavailable (database unreachable, or the write was dead-lettered); see `Retry-After`",
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# Every route validates its input (422) and needs the database (503); authenticated ones also
# answer a missing or wrong credential (401), a role too low (403) and a rate limit (429).
_ALWAYS = (422, 503)
_AUTHENTICATED = (401, 403, 429)


def problem_responses(*statuses: int, authenticated: bool = True) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status as a ``Problem`` under ``application/problem+json``.

    ``problem_responses(404, 409)`` documents those plus 422 and 503, and 401, 403 and 429 unless
    ``authenticated=False``.
    """
    wanted = set(statuses) | set(_ALWAYS) | (set(_AUTHENTICATED) if authenticated else set())
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            "content": {PROBLEM: {"schema": _PROBLEM_REF}},
        }
        for status in sorted(wanted)
    }


def problem(
    status: int, slug: str, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> FastJSON:
    body = {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if "retry_after_seconds" in extra:
        headers["Retry-After"] = str(extra["retry_after_seconds"])
    return FastJSON(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "owners", 0) → "owners[0]"; the location kind (body/query/path/header) is dropped.
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or str(loc[0] if loc else "")


def _allowed(request: Request, *, fixed_only: bool = False) -> str:
    """Every method some operation takes at this path, read from the OpenAPI document (FastAPI nests
    included routers, so the route list is not flat; and Starlette's own 405 names only the methods of
    the first route that matched). ``fixed_only``: only paths without parameters."""
    paths = request.app.openapi()["paths"]
    matching = [t for t, regex in _path_patterns(request.app) if regex.fullmatch(request.url.path)]
    fixed = [t for t in matching if "{" not in t]
    # A fixed path (/metadata/search) is the resource meant, not /metadata/{asset_id}.
    chosen = fixed if fixed or fixed_only else matching
    return ", ".join(sorted({m.upper() for t in chosen for m in paths[t]}))


def fixed_path_methods(request: Request) -> str:
    """The methods of a fixed path (``/metadata/search``) that matches this request's URL, or "" when
    none does: a request there taken by a ``/{id}`` route is answered 405, not judged as an id."""
    return _allowed(request, fixed_only=True)


def _path_patterns(app: FastAPI) -> list[tuple[str, re.Pattern[str]]]:
    cached: list[tuple[str, re.Pattern[str]]] | None = getattr(app.state, "path_patterns", None)
    if cached is None:
        cached = [
            (t, re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t)))) for t in app.openapi().get("paths", {})
        ]
        app.state.path_patterns = cached
    return cached


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the ``Problem`` schema in its components, and its default 422
    (``HTTPValidationError`` as JSON, which Lily never answers) replaced by the problem Lily sends."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in Problem.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs").items():
        schemas.setdefault(name, schema)
    schemas["Problem"] = {
        k: v for k, v in Problem.model_json_schema(ref_template="#/components/schemas/{model}").items() if k != "$defs"
    }
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            default_422 = responses.get("422", {}).get("content", {}).get("application/json")
            if default_422 is not None:
                responses["422"] = problem_responses(422, authenticated=False)[422]
            if "requestBody" in operation:
                # Any body may be malformed (400) or over the size limit (BodyLimitMiddleware, 413).
                for status, response in problem_responses(400, 413, authenticated=False).items():
                    responses.setdefault(str(status), response)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    app.openapi_schema = doc
    return doc


def _located(error: Any) -> str:
    """The field of a pydantic error, down to the member of free JSON that cannot be stored."""
    field = _field(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Unstorable) and cause.path:
        return f"{field}{cause.path}" if cause.path.startswith("[") else f"{field}.{cause.path}"
    return field


def _message(error: Any) -> str:
    cause = (error.get("ctx") or {}).get("error")
    return cause.message if isinstance(cause, Unstorable) else str(error["msg"])


def install(app: FastAPI) -> None:
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(LilyError)
    async def lily_error(request: Request, exc: LilyError) -> FastJSON:
        body = exc.to_problem()
        return problem(
            body.pop("status"),
            exc.type_slug,
            body.pop("title"),
            body.pop("detail"),
            **{k: v for k, v in body.items() if k != "type"},
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> FastJSON:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return problem(400, "malformed-json", "Malformed JSON", f"the body is not valid JSON: {detail}")
        if any(e["loc"] and e["loc"][0] == "path" for e in errors):
            # /metadata/search taken as /metadata/{asset_id} by a method only the latter has: the path
            # names a fixed resource, so the method is what is wrong (405), not the id.
            fixed = _allowed(request, fixed_only=True)
            if fixed:
                return problem(
                    405, "method-not-allowed", "Method not allowed", "Method Not Allowed", headers={"Allow": fixed}
                )
        fields = [
            {"field": _located(e), "message": _message(e), "in": e["loc"][0] if e["loc"] else None} for e in errors
        ]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return problem(422, "validation", "Invalid request", summary, errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> FastJSON:
        # Raised by the framework itself: unknown routes, wrong methods, bodies it could not parse.
        slugs = {
            400: "bad-request",
            404: "not-found",
            405: "method-not-allowed",
            401: "unauthorized",
            413: "payload-too-large",
        }
        try:
            title = HTTPStatus(exc.status_code).phrase.capitalize()
        except ValueError:
            title = "Error"
        detail = "no such resource" if exc.status_code == 404 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(request)
        return problem(exc.status_code, slugs.get(exc.status_code, "http-error"), title, detail, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> FastJSON:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500,
            "internal",
            "Internal error",
            "an unexpected error occurred; it was logged",
            request_id=request.headers.get("x-request-id"),
        )
