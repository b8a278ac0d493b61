"""Body size limits, enforced while the body streams in (a lying Content-Length cannot get past)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lily.api.errors import problem


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, default: int, overrides: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.overrides = overrides

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.overrides.items():
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        seen = 0
        exceeded = started = False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded(message: Message) -> None:
            # Frameworks may catch the error raised while reading and answer on their own (FastAPI turns
            # it into a 400); once the limit is passed, whatever the app answers is replaced by the 413.
            nonlocal started
            if exceeded and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except BodyTooLarge:
            if started:  # too late to answer 413; let the server abort the response
                raise
        if exceeded and not started:
            await _too_large(limit)(scope, receive, send)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds {limit} bytes")
        self.limit = limit


def _too_large(limit: int) -> ASGIApp:
    return problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"the request body exceeds the limit of {limit} bytes",
        limit=limit,
    )
