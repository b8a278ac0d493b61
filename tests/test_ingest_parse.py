"""The bulk parsers and per-item validation, without a server: chunk boundaries, indexes, errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from lily.bulk.client import is_ndjson_file
from lily.bulk.ingest import event_id
from lily.bulk.items import Unstorable, describe, to_json, validate
from lily.bulk.parse import ArraySplitter, MalformedBody, Refused, is_ndjson, json_array_items, ndjson_lines
from lily.domain.assets import AssetIn

LIMIT = 1024 * 1024


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def collect(items: AsyncIterator[tuple[int, object]]) -> list[tuple[int, object]]:
    return [item async for item in items]


@pytest.mark.parametrize("size", [1, 3, 64, 10_000])
async def test_ndjson_lines_survive_any_chunking(size: int) -> None:
    data = b'{"a": 1}\n\n  \r\n{"b": "x\\ny"}\r\n{"c": 3}'  # blank lines skipped, no final newline
    got = await collect(ndjson_lines(chunked(data, size), max_item_bytes=LIMIT))
    assert [(i, orjson.loads(raw)) for i, raw in got] == [(0, {"a": 1}), (1, {"b": "x\ny"}), (2, {"c": 3})]


@pytest.mark.parametrize("size", [1, 5, 10_000])
async def test_json_array_items_survive_any_chunking(size: int) -> None:
    data = b' \n[{"a": 1.5}, 2, "three", {"nested": [1, {"x": null}]}]\n'
    got = await collect(json_array_items(chunked(data, size), max_item_bytes=LIMIT))
    assert got == [(0, {"a": 1.5}), (1, 2), (2, "three"), (3, {"nested": [1, {"x": None}]})]
    assert isinstance(got[0][1], dict) and isinstance(got[0][1]["a"], float)  # not Decimal


@pytest.mark.parametrize("data", [b"", b"   ", b'{"a": 1}', b"[1, 2", b"[1, }", b"[1] [2]"])
async def test_json_array_refuses_what_is_not_one_array(data: bytes) -> None:
    with pytest.raises(MalformedBody):
        await collect(json_array_items(chunked(data, 4), max_item_bytes=LIMIT))


def test_validate_normalises_like_the_single_endpoint() -> None:
    payload = validate({"qualified_name": " pg://db/s.t ", "type": "TABLE", "tags": ["a", "a", "b"]})
    assert payload == {"qualified_name": "pg://db/s.t", "type": "table", "tags": ["a", "b"]}
    extra = validate(b'{"qualified_name": "pg://x", "type": "table", "bogus": 1}')
    assert extra == "bogus: Extra inputs are not permitted"
    assert str(validate(b"{nope")).startswith("malformed JSON")


def test_content_type_and_file_detection(tmp_path: Path) -> None:
    assert is_ndjson("application/x-ndjson; charset=utf-8") and not is_ndjson("application/json")
    array = tmp_path / "export"
    array.write_bytes(b"\n  [{}]")
    lines = tmp_path / "export2"
    lines.write_bytes(b"{}\n{}\n")
    assert not is_ndjson_file(array) and is_ndjson_file(lines)


def test_event_ids_are_uuid7_and_time_ordered() -> None:
    ids = [uuid.UUID(event_id()) for _ in range(1000)]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert len(set(ids)) == 1000
    assert ids[0].bytes[:6] <= ids[-1].bytes[:6]  # the millisecond prefix never goes backwards


@pytest.mark.parametrize("size", [1, 2, 7, 10_000])
async def test_json_array_strings_hide_structure_across_chunks(size: int) -> None:
    data = b'[{"a": "x],\\"[{"}, "\\\\", {"b": ["}", "\\u005d"]}]'
    got = await collect(json_array_items(chunked(data, size), max_item_bytes=LIMIT))
    assert got == [(0, {"a": 'x],"[{'}), (1, "\\"), (2, {"b": ["}", "]"]})]


@pytest.mark.parametrize("data", [b"[1,]", b"[,1]", b"[1,,2]", b"[1}", b'["open', b"[1] x"])
async def test_json_array_refuses_a_broken_structure(data: bytes) -> None:
    with pytest.raises(MalformedBody):
        await collect(json_array_items(chunked(data, 3), max_item_bytes=LIMIT))


async def test_deep_and_long_items_are_refused_alone_while_streaming() -> None:
    deep = b'{"attributes": {"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
    long = b'{"description": "' + b"x" * 5000 + b'"}'
    padded = b" " * 5000 + b"7"  # blanks do not count as the item's bytes
    data = b"[" + b",".join([b"1", deep, long, padded, b'"last"']) + b"]"
    splitter = ArraySplitter(max_item_bytes=1024, max_depth=64)
    got = []
    for i in range(0, len(data), 4096):
        got += splitter.feed(data[i : i + 4096])
        assert len(splitter.buf) <= 1024 + 4096  # never more than one bound and one chunk held
    got += splitter.close()
    assert [raw for _, raw in got] == [
        1,
        Refused("the item nests deeper than 64 levels"),
        Refused("the item exceeds 1024 bytes (the limit of one asset's body)"),
        7,
        "last",
    ]


async def test_long_ndjson_lines_are_refused_alone_without_holding_them() -> None:
    data = b'{"a": 1}\n' + b"x" * 100_000 + b"\n" + b" " * 100_000 + b'\n{"b": 2}'
    got = await collect(ndjson_lines(chunked(data, 1000), max_item_bytes=1024))
    assert got == [
        (0, b'{"a": 1}'),
        (1, Refused("the item exceeds 1024 bytes (the limit of one asset's body)")),
        (2, b'{"b": 2}'),
    ]


def single_endpoint(body: bytes) -> dict[str, object] | str:
    """What ``POST /metadata`` makes of a body: its framework's ``json.loads``, then the asset rules."""
    try:
        asset = AssetIn.model_validate(json.loads(body))
    except ValidationError as exc:
        return describe(exc)
    return {**asset.model_dump(mode="json", exclude_unset=True), "qualified_name": asset.qualified_name}


@pytest.mark.parametrize(
    "body",
    [
        b'{"qualified_name": "pg://x", "type": "t", "attributes": {"n": 123456789012345678901234567890}}',
        b'{"qualified_name": "pg://a\\ud800", "type": "t"}',
        b'{"qualified_name": "pg://b", "type": "t", "attributes": {"s": "\\udc00"}}',
        b'{"qualified_name": "pg://c", "type": "t", "attributes": {"f": NaN}}',
    ],
)
def test_items_are_parsed_as_the_single_endpoint_parses_them(body: bytes) -> None:
    """Never rewritten: big integers stay exact, lone surrogates stay lone, so the rules decide alike."""
    ours, theirs = validate(body), single_endpoint(body)
    if isinstance(theirs, str):
        assert ours == theirs
        return
    assert isinstance(ours, dict) and ours.items() >= theirs.items()
    try:
        text = to_json(ours)
    except Unstorable:  # a lone surrogate the rules let through: refused before it reaches the store
        return
    assert json.loads(text) == ours  # stored exactly (no float, no '?')


def test_refused_and_unparseable_items_give_reasons() -> None:
    assert validate(Refused("too deep")) == "too deep"
    assert str(validate(b"[" * 100_000)).startswith("malformed JSON")
    assert str(validate(b"\xff\xfe{")).startswith("malformed JSON")


@pytest.mark.parametrize("size", [1, 2, 3, 10_000])
async def test_json_array_numbers_characters_and_bad_items_across_chunks(size: int) -> None:
    data = '[12345, "héllo ☃ 😀", {"a" 1}, [1, 2], 6]'.encode()
    got = await collect(json_array_items(chunked(data, size), max_item_bytes=LIMIT))
    assert [raw for _, raw in got[:2]] == [12345, "héllo ☃ 😀"]
    assert isinstance(got[2][1], Refused) and got[2][1].reason.startswith("malformed JSON")  # refused alone
    assert got[3:] == [(3, [1, 2]), (4, 6)]
    with pytest.raises(MalformedBody, match="UTF-8"):
        await collect(json_array_items(chunked(b'["\xff"]', size), max_item_bytes=LIMIT))
