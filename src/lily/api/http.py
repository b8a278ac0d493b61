"""The HTTP/1.1 protocol `lily serve` gives uvicorn: httptools, with a request's head bounded.

httptools (llhttp) parses a request in about a third of h11's time, which on the point-read route was
a fifth of the API's CPU per request. But it takes headers without limit: llhttp leaves the bound to
its embedder (Node sets one; uvicorn does not), and 100 MiB of headers from one connection were measured
held in memory. h11 bounded the head (``h11_max_incomplete_event_size``); this class keeps that bound:
once more than ``MAX_HEAD_BYTES`` have arrived while a request's head is still incomplete, the
connection is answered 400 and closed, whatever the head is made of (one endless header value, many
headers, a long URL, or a slow drip of any of them).
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # Bytes received while the current request's head was incomplete. A chunk in which a head began is
    # counted whole (the parser does not say where in it the head began), so a bound can be reached up to
    # one read early, and only by a client pipelining a request behind another one's body.
    _head_bytes = 0
    _in_head = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._in_head = False
                self.send_400_response("Request head too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()
