"""Real HTTP servers on loopback that behave like a webhook receiver, Slack and Jira.

Each runs ``http.server`` in a thread (HTTP/1.1, keep-alive). A test scripts the answers with a
``respond(request) -> Answer`` function and reads what arrived from ``requests``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a slow receiver)


Respond = Callable[[Request], Answer]


class Receiver:
    def __init__(self, respond: Respond | None = None) -> None:
        self.respond: Respond = respond or (lambda r: Answer())
        self.requests: list[Request] = []
        self.connections = 0  # TCP connections accepted (keep-alive: fewer than requests)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections += 1

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    receiver.requests.append(request)
                answer = receiver.respond(request)
                if answer.delay:
                    time.sleep(answer.delay)
                data = answer.body if isinstance(answer.body, bytes) else orjson.dumps(answer.body)
                try:
                    self.send_response(answer.status)
                    for k, v in answer.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    if data and "Content-Type" not in answer.headers:
                        self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self, path: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]


@contextmanager
def receiver(respond: Respond | None = None) -> Iterator[Receiver]:
    server = Receiver(respond).start()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class FakeJira:
    """Enough of Jira Cloud REST v3 for the channel: JQL search by label, create, comment, transitions."""

    def __init__(self) -> None:
        self.issues: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, list[Any]] = {}
        self.fail_next: list[Answer] = []

    def __call__(self, request: Request) -> Answer:
        if self.fail_next:
            return self.fail_next.pop(0)
        if request.headers.get("authorization", "")[:6] != "Basic ":
            return Answer(401, {"errorMessages": ["auth"]})
        path = request.path
        if path == "/rest/api/3/search/jql":
            jql = request.json()["jql"]
            label = jql.split('labels = "', 1)[1].split('"', 1)[0]
            found = [
                {"key": k, "fields": {"status": {"name": i["status"]}}}
                for k, i in self.issues.items()
                if label in i["labels"] and i["status"] != "Done"
            ]
            return Answer(200, {"issues": found[:1]})
        if path == "/rest/api/3/issue":
            key = f"LILY-{len(self.issues) + 1}"
            fields = request.json()["fields"]
            self.issues[key] = {"labels": fields["labels"], "status": "To Do", "fields": fields}
            return Answer(201, {"id": str(len(self.issues)), "key": key})
        key = path.split("/")[5] if path.startswith("/rest/api/3/issue/") else ""
        if key not in self.issues:
            return Answer(404, {"errorMessages": ["no issue"]})
        if path.endswith("/comment"):
            self.comments.setdefault(key, []).append(request.json()["body"])
            return Answer(201, {"id": "c1"})
        if path.endswith("/transitions") and request.method == "GET":
            return Answer(200, {"transitions": [{"id": "11", "name": "In Progress"}, {"id": "31", "name": "Done"}]})
        if path.endswith("/transitions"):
            if request.json()["transition"]["id"] == "31":
                self.issues[key]["status"] = "Done"
            return Answer(204)
        return Answer(404)


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy (returned) or the deadline passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)  # between polls of a condition, not as synchronisation
    raise AssertionError(f"timed out waiting for {what}")


async def eventually(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """:func:`wait_for` for async tests: polls without blocking the loop the dispatcher runs on."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
