"""Bounded JSON request bodies, plain or gzip: inflated and split while they stream in, in small slices.

A few KiB of gzip can inflate to gigabytes, a gzip stream may be millions of empty members, and a small
body may nest a million brackets deep. So nothing here waits for the whole body before checking it:
each chunk is inflated with a bound on the output of one step (``SLICE_BYTES``), a bound on the total
(``max_bytes``) and a bound on the number of gzip members (``MAX_GZIP_MEMBERS``); the inflated bytes go
through the bulk array splitter (``lily.bulk.parse``), which bounds each value's size and depth before
it is parsed; and between slices the event loop gets its turn, so one tenant's body never stalls
another tenant's requests for more than a slice's work (about a millisecond).
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from starlette.requests import Request

from lily.bulk.parse import ArraySplitter, MalformedBody, NotAnArray, Refused
from lily.domain.errors import Invalid, LilyError, PayloadTooLarge

# One step of work between two turns of the event loop: inflating or splitting 64 KiB takes well under
# a millisecond.
SLICE_BYTES = 64 * 1024
# Producers send one gzip member; concatenated members are legal, but more than a handful is an attack
# (each empty member is 20 bytes of input and costs a decompressor of its own).
MAX_GZIP_MEMBERS = 16
MAX_DEPTH = 64


class UnsupportedEncoding(LilyError):
    status, type_slug, title = 415, "unsupported-media-type", "Unsupported media type"


class GzipInflater:
    """Incremental, bounded gunzip of a stream of chunks (several members allowed, up to a bound)."""

    def __init__(self, max_bytes: int, max_members: int = MAX_GZIP_MEMBERS) -> None:
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.members = 1
        self.out = 0
        self._z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._between = False  # the last member ended; the next byte must start another

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The inflated bytes of ``data``, in slices of at most ``SLICE_BYTES``."""
        view = memoryview(data)
        # Input in slices too, so a member's leftover (``unused_data``) is never more than one slice.
        for start in range(0, len(view), SLICE_BYTES):
            pending: bytes = bytes(view[start : start + SLICE_BYTES])
            while True:
                if self._between:
                    if not pending:
                        break
                    self._next_member()
                try:
                    piece = self._z.decompress(pending, SLICE_BYTES)
                except zlib.error as exc:
                    raise MalformedBody(f"the body is not valid gzip: {exc}") from None
                self._count(piece)
                if piece:
                    yield piece
                if self._z.eof:
                    pending, self._between = self._z.unused_data, True
                    continue
                pending = self._z.unconsumed_tail
                # A full slice may leave output inside zlib even when all input was taken: ask again.
                if not pending and len(piece) < SLICE_BYTES:
                    break

    def close(self) -> None:
        if not self._z.eof:
            raise MalformedBody("the body is not valid gzip: it is truncated")

    def _next_member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise MalformedBody(f"the body is not valid gzip for Lily: more than {self.max_members} members")
        self._z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._between = False

    def _count(self, piece: bytes) -> None:
        self.out += len(piece)
        if self.out > self.max_bytes:
            raise PayloadTooLarge(f"the decompressed body exceeds {self.max_bytes} bytes", limit=self.max_bytes)


async def inflated(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The request body in slices, gunzipped if it says so; at most ``max_bytes`` of it (413 beyond)."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip"):  # x-gzip: the older name, which RFC 9110 asks servers to accept
        inflater = GzipInflater(max_bytes)
        async for chunk in request.stream():
            for piece in inflater.feed(chunk):
                yield piece
                await asyncio.sleep(0)
        inflater.close()
        return
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > max_bytes:
            raise PayloadTooLarge(f"the body exceeds {max_bytes} bytes", limit=max_bytes)
        for start in range(0, len(chunk), SLICE_BYTES):
            yield chunk[start : start + SLICE_BYTES]
            await asyncio.sleep(0)


async def read_json(request: Request, *, max_bytes: int, max_item_bytes: int, array: bool = False) -> Any:
    """The JSON body (plain or gzip), parsed under bounds: ``max_bytes`` for the whole body once
    inflated; ``max_item_bytes`` and ``MAX_DEPTH`` for the value itself, or for each element when
    ``array`` (a JSON array is then required). Errors: 400 malformed, 413 too large, 415 not JSON or an
    unknown encoding, 422 too deep (naming ``[index]`` in an array)."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and "json" not in content_type:
        raise UnsupportedEncoding(f"send application/json, not {content_type}")
    # A lone value is split as the one element of an array around it: the same bounds, one code path.
    splitter = ArraySplitter(max_item_bytes=max_item_bytes, max_depth=MAX_DEPTH, parse=False)
    values: list[Any] = []
    try:
        if not array:
            splitter.feed(b"[")
        async for piece in inflated(request, max_bytes):
            for index, raw in splitter.feed(piece):
                values.append(_parse(index, raw, array=array, limit=max_item_bytes))
                await asyncio.sleep(0)
        tail = splitter.feed(b"]") if not array else []
        values += [_parse(i, raw, array=array, limit=max_item_bytes) for i, raw in tail + splitter.close()]
    except NotAnArray:
        raise Invalid("the body must be a JSON array", field="body") from None
    except MalformedBody as exc:
        if exc.detail.startswith("the body is not valid"):  # gzip, or an element: already says so
            raise
        what = "a JSON array" if array else "one JSON value"
        raise MalformedBody(f"the body is not {what}: {exc.detail}") from None
    if array:
        return values
    if len(values) != 1:
        raise MalformedBody("the body is not one JSON value")
    return values[0]


# 19 digits or more: possibly beyond 64 bits (a cheap over-approximation; digits inside strings also match).
_LONG_INTEGER = re.compile(r"\d{19}")


def _parse(index: int, raw: str | Refused, *, array: bool, limit: int) -> Any:
    where = f"[{index}]" if array else "body"
    if isinstance(raw, Refused):
        if raw.reason.startswith("the item exceeds"):
            raise PayloadTooLarge(f"{where} exceeds {limit} bytes", limit=limit, field=where)
        raise Invalid(f"{where} nests deeper than {MAX_DEPTH} levels", field=where)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON ({where}): {exc}") from None
    if _LONG_INTEGER.search(raw):
        # orjson reads integers beyond 64 bits as floats, silently; the standard parser keeps them exact,
        # so the storable check refuses them (422 naming the member) instead of storing a rewritten number.
        value = json.loads(raw)
    return value
