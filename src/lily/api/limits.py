"""Request-body limits, enforced while the body streams in: size (413) and read time (408).

A lying ``Content-Length`` cannot get past the size limit, and a client that stops sending (a stalled
chunked upload, a ``Content-Length`` larger than what it sends) cannot hold a request open: each read
of the body waits at most ``idle_timeout`` seconds for the next chunk, and the whole body must arrive
within ``total_timeout`` seconds of the request's start. Either answers 408 and closes the connection,
and the application sees the read fail, so a bulk upload rolls back and frees its slot.
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lily.api.errors import problem


def _prefix_pattern(prefix: str) -> re.Pattern[str]:
    """A path prefix in which ``{name}`` stands for one path segment, so a route's own path template
    (``/lily/v1/connectors/{tenant_id}/{connector_id}/artifacts``) raises the limit for that route only."""
    parts = re.split(r"\{[^/{}]+\}", prefix)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        default: int,
        overrides: dict[str, int],
        idle_timeout: float = 15.0,
        total_timeout: float = 300.0,
    ) -> None:
        self.app = app
        self.default = default
        self.overrides = [(_prefix_pattern(prefix), limit) for prefix, limit in overrides.items()]
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.overrides:
            if pattern.match(path):
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout
        seen = 0
        refused: BodyRefused | None = None
        started = body_done = disconnected = False

        async def limited() -> Message:
            nonlocal seen, refused, body_done, disconnected
            if body_done:  # later reads only wait for a disconnect: the app's business, not a body read
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.idle_timeout, deadline - loop.time())))
            except TimeoutError:
                refused = BodyTimeout(self.idle_timeout, self.total_timeout)
                raise refused from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = BodyTooLarge(limit)
                    raise refused
                body_done = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def guarded(message: Message) -> None:
            # Frameworks may catch the error raised while reading and answer on their own (FastAPI turns
            # it into a 400); once a limit is passed, whatever the app answers is replaced by ours.
            nonlocal started
            if refused is not None and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except BodyRefused:
            if started:  # too late to answer; let the server abort the response
                raise
        except ClientDisconnect:
            if not disconnected:
                raise
            return  # the client went away mid-body: there is no one to answer
        if refused is not None and not started:
            await refused.response()(scope, receive, send)


class BodyRefused(Exception):
    def response(self) -> ASGIApp:
        raise NotImplementedError


class BodyTooLarge(BodyRefused):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds {limit} bytes")
        self.limit = limit

    def response(self) -> ASGIApp:
        return _too_large(self.limit)


class BodyTimeout(BodyRefused):
    def __init__(self, idle: float, total: float) -> None:
        super().__init__("the request body did not arrive in time")
        self.idle, self.total = idle, total

    def response(self) -> ASGIApp:
        answer = problem(
            408,
            "request-timeout",
            "Request timeout",
            f"the request body stopped arriving: each part must come within {self.idle:g} s"
            f" and the whole body within {self.total:g} s",
            idle_timeout_seconds=self.idle,
            total_timeout_seconds=self.total,
        )
        # The rest of the body may still be on its way: the connection cannot be reused.
        answer.headers["Connection"] = "close"
        return answer


def _too_large(limit: int) -> ASGIApp:
    return problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"the request body exceeds the limit of {limit} bytes",
        limit=limit,
    )
