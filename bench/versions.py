"""The Python cost per event of turning a change into an asset's next version, as the worker pays it:
``next_version`` (merge, diff, the source), the version snapshot (``to_document``) and the JSON of the
batch's rows as ``store.assets.write`` sends it (orjson, as the store's Jsonb dumper). No database:
this isolates the typed core from I/O, which ``bench/ingest.py`` measures end to end.

    python bench/versions.py            # µs per event for creates and updates, best of 5 rounds
    python bench/versions.py --n 20000

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from lily.domain.assets import Asset, to_document
from lily.domain.versions import Upsert, Writer, next_version


def payload(i: int, generation: int) -> dict[str, Any]:
    """The body of ``bench/ingest.py``'s assets: ~300 bytes, a few fields changing per generation."""
    return {
        "qualified_name": f"snowflake://acme/analytics.schema_{i % 97}.table_{i}",
        "type": "table",
        "description": f"Daily snapshot of business entity {i}, generation {generation}",
        "owners": [f"team-{i % 13}"],
        "tags": ["bench", f"domain-{i % 7}"] + (["pii"] if i % 10 == 0 else []),
        "attributes": {"rows": i * 17 + generation, "format": "parquet", "gen": generation},
    }


def apply(before: list[Asset | None], payloads: list[dict[str, Any]], writer: Writer) -> list[Asset]:
    rows: list[Asset] = []
    snapshots: list[dict[str, Any]] = []
    for current, body in zip(before, payloads, strict=True):
        version = next_version(current, body["qualified_name"], Upsert(body), writer)
        assert version is not None
        rows.append(version.asset)
        snapshots.append(to_document(version.asset))
    orjson.dumps(rows)  # the batch's jsonb_to_recordset document
    return rows


def best_of(rounds: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="events per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    writer = Writer("bench", "bulk", datetime.now(UTC))
    created = apply([None] * args.n, [payload(i, 0) for i in range(args.n)], writer)
    updates = [payload(i, 1) for i in range(args.n)]
    for label, before, bodies in (("create", [None] * args.n, [payload(i, 0) for i in range(args.n)]),
                                  ("update", list(created), updates)):  # fmt: skip
        seconds = best_of(args.rounds, lambda before=before, bodies=bodies: apply(before, bodies, writer))
        print(f"{label}: {seconds / args.n * 1e6:.1f} µs per event (next_version + snapshot + row JSON)")


if __name__ == "__main__":
    main()
