"""Incremental parsers for bulk bodies: NDJSON line by line, JSON arrays with ijson's C backend.

Both yield ``(index, raw)`` pairs as the chunks arrive, so a 64 MiB body is never held whole.
An NDJSON line that is not JSON fails alone (it is handed on as bytes and rejected by validation
with its index). A JSON array has no line boundaries to resynchronise on, so a syntax error there
ends the whole request (``MalformedBody``): we cannot know where the next item starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ijson

from lily.domain.errors import LilyError

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")


class MalformedBody(LilyError):
    status, type_slug, title = 400, "malformed-json", "Malformed JSON"


def is_ndjson(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() in NDJSON_TYPES


async def ndjson_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """Each non-blank line with its item index (blank lines are not items)."""
    index = 0
    rest = b""
    async for chunk in chunks:
        if not chunk:
            continue
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.strip():
                yield index, line
                index += 1
    if rest.strip():
        yield index, rest


async def json_array_items(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, Any]]:
    """The elements of a top-level JSON array, each parsed to Python objects, with their index."""
    parsed: list[Any] = ijson.sendable_list()
    # use_float: plain floats rather than Decimal, as the single-asset endpoint would produce.
    coro = ijson.items_coro(parsed, "item", use_float=True)
    index = 0
    started = False
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            if not started:
                head = chunk.lstrip()
                if not head:
                    continue
                if not head.startswith(b"["):
                    raise MalformedBody(
                        "a bulk body is a JSON array of assets, or NDJSON with Content-Type: application/x-ndjson"
                    )
                started = True
            coro.send(chunk)
            for item in parsed:
                yield index, item
                index += 1
            del parsed[:]
        if not started:
            raise MalformedBody("the body is empty; send a JSON array (possibly []) or NDJSON")
        coro.close()
        for item in parsed:
            yield index, item
            index += 1
    except ijson.JSONError as exc:
        raise MalformedBody(
            f"the body is not a valid JSON array (after item {index}): {exc}", item_index=index
        ) from exc
