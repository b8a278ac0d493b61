"""RFC 9457 problem+json for every error, with the offending fields named for validation errors."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lily.api.responses import FastJSON
from lily.domain.errors import LilyError

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
TYPE_BASE = "https://lily.dev/problems/"


def problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> FastJSON:
    body = {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if "retry_after_seconds" in extra:
        headers["Retry-After"] = str(extra["retry_after_seconds"])
    return FastJSON(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "owners", 0) → "owners[0]"; the location kind (body/query/path/header) is dropped.
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or str(loc[0] if loc else "")


def install(app: FastAPI) -> None:
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
        fields = [
            {"field": _field(e["loc"]), "message": e["msg"], "in": e["loc"][0] if e["loc"] else None} for e in errors
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
        return problem(exc.status_code, slugs.get(exc.status_code, "http-error"), title, detail)

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
