"""The bulk parsers and per-item validation, without a server: chunk boundaries, indexes, errors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from lily.bulk.client import is_ndjson_file
from lily.bulk.ingest import event_id
from lily.bulk.items import validate
from lily.bulk.parse import MalformedBody, is_ndjson, json_array_items, ndjson_lines


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def collect(items: AsyncIterator[tuple[int, object]]) -> list[tuple[int, object]]:
    return [item async for item in items]


@pytest.mark.parametrize("size", [1, 3, 64, 10_000])
async def test_ndjson_lines_survive_any_chunking(size: int) -> None:
    data = b'{"a": 1}\n\n  \r\n{"b": "x\\ny"}\r\n{"c": 3}'  # blank lines skipped, no final newline
    got = await collect(ndjson_lines(chunked(data, size)))
    assert [(i, orjson.loads(raw)) for i, raw in got] == [(0, {"a": 1}), (1, {"b": "x\ny"}), (2, {"c": 3})]


@pytest.mark.parametrize("size", [1, 5, 10_000])
async def test_json_array_items_survive_any_chunking(size: int) -> None:
    data = b' \n[{"a": 1.5}, 2, "three", {"nested": [1, {"x": null}]}]\n'
    got = await collect(json_array_items(chunked(data, size)))
    assert got == [(0, {"a": 1.5}), (1, 2), (2, "three"), (3, {"nested": [1, {"x": None}]})]
    assert isinstance(got[0][1], dict) and isinstance(got[0][1]["a"], float)  # not Decimal


@pytest.mark.parametrize("data", [b"", b"   ", b'{"a": 1}', b"[1, 2", b"[1, }", b"[1] [2]"])
async def test_json_array_refuses_what_is_not_one_array(data: bytes) -> None:
    with pytest.raises(MalformedBody):
        await collect(json_array_items(chunked(data, 4)))


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
