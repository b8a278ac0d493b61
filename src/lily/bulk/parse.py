"""Incremental, bounded splitters for bulk bodies: NDJSON line by line, JSON arrays item by item.

Both yield ``(index, raw)`` pairs as the chunks arrive, where ``raw`` is the bytes of one item (parsed
later by ``bulk.items``, exactly as ``POST /metadata`` parses its body) or a :class:`Refused` reason for
an item that broke a bound. Bounds are checked while the bytes stream in, never after: an item longer
than ``max_item_bytes`` (the single-asset body limit) or nesting deeper than ``max_depth`` is refused
alone and its bytes are dropped as they arrive, so no item ever costs more than its bound in memory.

A JSON array is split by its structure (strings, brackets, top-level commas), not parsed: one regex
search per structural byte, C-speed counting across runs of brackets in items already refused. An item
the splitter can delimit but that is not valid JSON is refused alone, like a bad NDJSON line. A body
whose structure is broken (not an array, unbalanced, truncated, an empty item) ends the whole request
(``MalformedBody``): we cannot know where the next item starts.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from lily.domain.errors import LilyError

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")

# Brackets an item may open: the item itself, ``attributes``, and the attribute nesting the asset
# rules allow (``domain.assets.MAX_ATTRIBUTE_DEPTH``), with room to spare; deeper is refused unread.
MAX_ITEM_DEPTH = 64


class MalformedBody(LilyError):
    status, type_slug, title = 400, "malformed-json", "Malformed JSON"


class NotAnArray(MalformedBody):
    """The body is not a JSON array at all (its first byte is not '[')."""


@dataclass(frozen=True, slots=True)
class Refused:
    """An item refused before parsing (too long, too deep); ``reason`` is what its job reports."""

    reason: str


def is_ndjson(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() in NDJSON_TYPES


_NONSPACE = re.compile(rb"[^ \t\r\n]")


def _too_long(limit: int) -> Refused:
    return Refused(f"the item exceeds {limit} bytes (the limit of one asset's body)")


async def ndjson_lines(
    chunks: AsyncIterator[bytes], *, max_item_bytes: int
) -> AsyncIterator[tuple[int, bytes | Refused]]:
    """Each non-blank line with its item index (blank lines are not items)."""
    index = 0
    pieces: list[bytes] = []  # the current line so far (joined once, at its end: no quadratic copying)
    size = 0
    refused = False
    content = False  # the current line has a non-blank byte
    async for chunk in chunks:
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            content = content or _NONSPACE.search(piece) is not None
            if not refused:
                size += len(piece)
                if size > max_item_bytes and content:
                    refused = True
                    pieces.clear()
                elif size > max_item_bytes:  # a long run of blanks: nothing to keep
                    pieces.clear()
                    size = 0
                else:
                    pieces.append(piece)
            if end < 0:
                break
            if content:
                yield index, _too_long(max_item_bytes) if refused else b"".join(pieces)
                index += 1
            pieces.clear()
            size, refused, content = 0, False, False
            start = end + 1
    if content:
        yield index, _too_long(max_item_bytes) if refused else b"".join(pieces)


# Outside strings: the characters that change the structure. Commas matter only between items (depth 1).
_TOP = re.compile(r'["\[\]{},]')
_INNER = re.compile(r'["\[\]{}]')
# Inside a string: everything up to its closing quote (escapes skipped); stops short at the buffer's end.
_STRING_REST = re.compile(r'[^"\\]*(?:\\[\s\S][^"\\]*)*')
_SPACE = re.compile(r"[ \t\r\n]*")
_TEXT_NONSPACE = re.compile(r"[^ \t\r\n]")
_OPEN, _CLOSE = frozenset("[{"), frozenset("]}")
_DECODER = json.JSONDecoder()  # what ``json.loads`` (and so the single endpoint's framework) parses with


class ArraySplitter:
    """Feeds on the chunks of a JSON array; returns the items each completes, parsed (``parse``: by
    ``json``'s own decoder, as ``json.loads`` would) or as text, or :class:`Refused`.

    The fast path parses an item in place with the C decoder when it is whole in the buffer and
    followed by its separator. Otherwise (split across chunks, invalid, too long, too deep) the item is
    scanned by structure: depth counts brackets, 1 inside the top-level array, 2 inside an item's
    object. Positions are offsets in ``buf`` (text), which holds only the current item, or nothing once
    it is refused.
    """

    def __init__(self, *, max_item_bytes: int, max_depth: int = MAX_ITEM_DEPTH, parse: bool = True) -> None:
        self.max_item_bytes = max_item_bytes
        self.max_depth = max_depth
        self.parse = parse
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0  # next character to scan
        self.span = 0  # where the current item's text starts (just after the '[' or ',' before it)
        self.fresh = False  # nothing of the current item scanned yet: the fast path may try it
        self.depth = 0
        self.in_string = False
        self.refused: Refused | None = None
        self.ended = False
        self.index = 0
        self.commas = 0

    def feed(self, chunk: bytes, *, final: bool = False) -> list[tuple[int, Any]]:
        try:
            text = self._utf8.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise MalformedBody(f"the body is not UTF-8: {exc}", item_index=self.index) from None
        out: list[tuple[int, Any]] = []
        if self.ended:
            if _TEXT_NONSPACE.search(text):
                raise MalformedBody("the body goes on after the array's closing bracket", item_index=self.index)
            return out
        if not self.in_string and self.pos == len(self.buf) and not text.strip(" \t\r\n"):
            # Blanks only, outside any string, nothing pending: one blank keeps tokens apart, the rest
            # would only be copied and scanned (a gzip bomb of whitespace is exactly that).
            text = "" if self.buf.endswith(" ") else " "
        self.buf += text
        buf = self.buf
        if self.depth == 0:
            first = _TEXT_NONSPACE.search(buf, self.pos)
            if first is None:
                self.pos = len(buf)
                self._compact()
                return out
            if buf[first.start()] != "[":
                raise NotAnArray(
                    "a bulk body is a JSON array of assets, or NDJSON with Content-Type: application/x-ndjson"
                )
            self.depth, self.pos = 1, first.end()
            self.span, self.fresh = self.pos, True
        while self.pos < len(buf) and not self.ended:
            if self.fresh and self.parse:
                step = self._fast(out, final)
                if step == "parsed":
                    continue
                if step == "wait":
                    break
            if self.in_string:
                end = _STRING_REST.match(buf, self.pos).end()  # type: ignore[union-attr]  # always matches
                if end < len(buf) and buf[end] == '"':
                    self.in_string, self.pos = False, end + 1
                    continue
                self.pos = end  # the string goes on in the next chunk (or a lone '\' waits for its pair)
                break
            if self.refused is not None and self._skip_brackets():
                continue
            m = (_TOP if self.depth == 1 else _INNER).search(buf, self.pos)
            if m is None:
                if self.fresh and _TEXT_NONSPACE.search(buf, self.pos):
                    self.fresh = False
                self.pos = len(buf)
                break
            at = m.start()
            c = buf[at]
            self.pos = at + 1
            if c not in ",]" or self.depth > 1:
                self.fresh = False
            if c == '"':
                self.in_string = True
            elif c in _OPEN:
                self.depth += 1
                if self.depth > self.max_depth + 1 and self.refused is None:
                    self.refused = Refused(f"the item nests deeper than {self.max_depth} levels")
            elif c in _CLOSE:
                self.depth -= 1
                if self.depth == 0:
                    if c != "]":
                        raise MalformedBody("the array is closed with '}'", item_index=self.index)
                    self._finish(at, out, last=True)
                    self.ended = True
            else:  # a comma between items
                self._finish(at, out, last=False)
        if self.ended and _TEXT_NONSPACE.search(buf, self.pos):
            raise MalformedBody("the body goes on after the array's closing bracket", item_index=self.index)
        self._check_size()
        self._compact()
        return out

    def close(self) -> list[tuple[int, Any]]:
        """The items the end of the body completes; raises if the array is not closed."""
        out = self.feed(b"", final=True)
        if self.depth == 0 and not self.ended:
            raise MalformedBody("the body is empty; send a JSON array (possibly []) or NDJSON")
        if not self.ended:
            raise MalformedBody(
                f"the body ends before the array is closed (in item {self.index})", item_index=self.index
            )
        return out

    def _fast(self, out: list[tuple[int, Any]], final: bool) -> str:
        """Parse the item at the buffer's first non-blank in place, if it is whole and its separator
        follows ("parsed": moved past the separator); else "wait" for more of it, or "scan" it."""
        buf = self.buf
        start = _SPACE.match(buf, self.pos).end()  # type: ignore[union-attr]  # always matches
        if start >= len(buf) or buf[start] in ",]":
            return "scan"  # blanks only so far, or an empty item: the structural path decides
        try:
            value, end = _DECODER.raw_decode(buf, start)
        except (ValueError, RecursionError):  # incomplete, invalid or deep: scan it by structure
            self.fresh = False
            return "scan"
        sep = _SPACE.match(buf, end).end()  # type: ignore[union-attr]
        if sep >= len(buf):
            if not final and sep - start <= self.max_item_bytes:
                return "wait"  # a number may go on, or the separator is in the next chunk
            self.fresh = False
            return "scan"
        if buf[sep] not in ",]":
            raise MalformedBody(
                f"the body is not a valid JSON array (after item {self.index}): expected ',' or ']'",
                item_index=self.index,
            )
        if self._too_long(buf, start, end):
            out.append((self.index, _too_long(self.max_item_bytes)))
        else:
            out.append((self.index, value))
        self.index += 1
        self.pos = sep + 1
        if buf[sep] == ",":
            self.commas += 1
            self.span = self.pos
        else:
            self.depth, self.ended = 0, True
        return "parsed"

    def _too_long(self, buf: str, start: int, end: int) -> bool:
        # Characters first (a UTF-8 character is 1 to 4 bytes): most items are far below a quarter.
        if (end - start) * 4 <= self.max_item_bytes:
            return False
        return len(buf[start:end].encode("utf-8", "surrogatepass")) > self.max_item_bytes

    def _finish(self, at: int, out: list[tuple[int, Any]], *, last: bool) -> None:
        """The item between ``span`` and the separator at ``at`` is complete."""
        if self.refused is None and at - self.span > self.max_item_bytes:
            self._refuse_if_content(at)
        if self.refused is not None:
            out.append((self.index, self.refused))
            self.index += 1
        else:
            item = self.buf[self.span : at].strip(" \t\r\n")
            if item:
                out.append((self.index, self._value(item)))
                self.index += 1
            elif not last or self.commas:  # [1,,2], [,1] and [1,] are not JSON; [] and [ ] are
                raise MalformedBody(f"item {self.index} of the array is empty", item_index=self.index)
        if not last:
            self.commas += 1
        self.refused = None
        self.span, self.fresh = at + 1, True

    def _value(self, item: str) -> Any:
        if self._too_long(item, 0, len(item)):
            return _too_long(self.max_item_bytes)
        if not self.parse:
            return item
        try:
            return json.loads(item)
        except RecursionError:
            return Refused("malformed JSON: nested too deeply")
        except ValueError as exc:
            return Refused(f"malformed JSON: {exc}")

    def _check_size(self) -> None:
        if self.refused is None and self.pos - self.span > self.max_item_bytes:
            self._refuse_if_content(self.pos)

    def _refuse_if_content(self, upto: int) -> None:
        if _TEXT_NONSPACE.search(self.buf, self.span, upto):
            self.refused = _too_long(self.max_item_bytes)
        else:  # only blanks so far: drop them, the item has not begun
            self.span = upto

    def _compact(self) -> None:
        """Drop what is no longer needed: everything before the item, or all of a refused item."""
        keep = self.pos if self.refused is not None or self.ended else self.span
        if self.fresh and keep == self.span:  # the item has not begun: its leading blanks can go too
            first = _TEXT_NONSPACE.search(self.buf, self.span, self.pos)
            keep = self.pos if first is None else first.start()
        if keep:
            self.buf = self.buf[keep:]
            self.pos -= keep
            self.span = max(0, self.span - keep)

    def _skip_brackets(self) -> bool:
        """In a refused item, jump over a string-free run of brackets by counting (C speed), up to where
        the item might end; True if it moved. Deep nesting is thus refused at memchr speed."""
        buf = self.buf
        quote = buf.find('"', self.pos)
        end = len(buf) if quote < 0 else quote
        while end - self.pos >= 256:
            closes = buf.count("]", self.pos, end) + buf.count("}", self.pos, end)
            if self.depth - closes > 1:  # the item cannot end inside [pos, end)
                self.depth += buf.count("[", self.pos, end) + buf.count("{", self.pos, end) - closes
                self.pos = end
                return True
            end = self.pos + (end - self.pos) // 2  # it might: try the first half
        return False


async def json_array_items(
    chunks: AsyncIterator[bytes], *, max_item_bytes: int, max_depth: int = MAX_ITEM_DEPTH
) -> AsyncIterator[tuple[int, Any]]:
    """The elements of a top-level JSON array, each parsed as ``json.loads`` would (or refused), with
    their index."""
    splitter = ArraySplitter(max_item_bytes=max_item_bytes, max_depth=max_depth)
    async for chunk in chunks:
        if chunk:
            for item in splitter.feed(chunk):
                yield item
    for item in splitter.close():
        yield item
