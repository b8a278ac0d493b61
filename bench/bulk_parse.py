"""Bulk parsing without a server: split and validate N items as a JSON array and as NDJSON.

    python bench/bulk_parse.py               # 100,000 items
    python bench/bulk_parse.py --items 20000

Prints, per format, the seconds to split the body (64 KiB chunks, as uvicorn hands them over) and to
split and validate every item (``lily.bulk.items.validate``, what ``POST /metadata/bulk`` does per item
before staging), with items/s. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from lily.bulk.items import validate
from lily.bulk.parse import json_array_items, ndjson_lines

LIMIT = 1024 * 1024


def documents(n: int) -> list[dict[str, Any]]:
    return [
        {
            "qualified_name": f"pg://db/s.t{i}",
            "type": "table",
            "description": f"table {i}",
            "tags": ["a", f"g{i % 10}"],
            "owners": ["x"],
            "attributes": {"i": i, "cols": [{"n": "a", "t": "int"}, {"n": "b", "t": "text"}]},
        }
        for i in range(n)
    ]


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(body), 65536):
        yield body[i : i + 65536]


async def timed(items: AsyncIterator[tuple[int, Any]], check: Callable[[Any], Any]) -> float:
    start = time.perf_counter()
    async for _, raw in items:
        check(raw)
    return time.perf_counter() - start


async def main(n: int) -> None:
    docs = documents(n)
    array = orjson.dumps(docs)
    lines = b"\n".join(orjson.dumps(d) for d in docs)
    print(f"{n} items: JSON array {len(array) / 2**20:.1f} MiB, NDJSON {len(lines) / 2**20:.1f} MiB")
    print("| format | split only | split + validate | items/s |")
    print("|---|---|---|---|")
    for name, make in (
        ("JSON array", lambda: json_array_items(chunks(array), max_item_bytes=LIMIT)),
        ("NDJSON", lambda: ndjson_lines(chunks(lines), max_item_bytes=LIMIT)),
    ):
        split = await timed(make(), lambda raw: None)
        full = await timed(make(), validate)
        print(f"| {name} | {split:.2f} s | {full:.2f} s | {n / full:,.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().items))
