"""Domain errors. The API maps each to an RFC 9457 problem; the pipeline records it on the event.

LilyError
 ├── NotFound              404  unknown id, or another tenant's (indistinguishable by design)
 ├── Conflict              409  e.g. an idempotency key reused with another body
 ├── PreconditionFailed    412  If-Match names a version that is no longer current
 ├── Invalid               422  input that parsed but breaks a rule; names the field
 ├── Unauthorized          401
 ├── Forbidden             403
 ├── TooManyRequests       429
 ├── PayloadTooLarge       413
 └── ServiceUnavailable    503  the database is unreachable; ``retry_after_seconds`` becomes Retry-After
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class LilyError(Exception):
    status = 500
    type_slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        return {
            "type": f"https://lily.dev/problems/{self.type_slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class NotFound(LilyError):
    status, type_slug, title = 404, "not-found", "Not found"


class Conflict(LilyError):
    status, type_slug, title = 409, "conflict", "Conflict"


class PreconditionFailed(LilyError):
    status, type_slug, title = 412, "precondition-failed", "Precondition failed"


class Invalid(LilyError):
    status, type_slug, title = 422, "validation", "Invalid request"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        errors = extra.pop("errors", None) or ([{"field": field, "message": detail}] if field else [])
        super().__init__(detail, errors=errors, **extra)


class Unauthorized(LilyError):
    status, type_slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(LilyError):
    status, type_slug, title = 403, "forbidden", "Forbidden"


class TooManyRequests(LilyError):
    status, type_slug, title = 429, "too-many-requests", "Too many requests"


class PayloadTooLarge(LilyError):
    status, type_slug, title = 413, "payload-too-large", "Payload too large"


class ServiceUnavailable(LilyError):
    status, type_slug, title = 503, "service-unavailable", "Service unavailable"


def problem_from_result(error: dict[str, Any]) -> LilyError:
    """Rebuild the error a pipeline stage recorded on an event (see ``LilyError.to_problem``)."""
    by_status = {cls.status: cls for cls in (NotFound, Conflict, PreconditionFailed, Invalid)}
    cls = by_status.get(int(error.get("status", 500)), LilyError)
    extra = {k: v for k, v in error.items() if k not in {"type", "title", "status", "detail"}}
    err = cls.__new__(cls)
    LilyError.__init__(err, str(error.get("detail", "")), **extra)
    return err


def invalid_from(exc: ValidationError) -> Invalid:
    """The first error of a pydantic validation, as :class:`Invalid` naming its field (``a.b.0``)."""
    first = exc.errors()[0]
    return Invalid(first["msg"], field=".".join(str(p) for p in first["loc"]))
