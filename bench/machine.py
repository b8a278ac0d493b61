"""How fast this machine is, printed beside a benchmark's figures so runs on different machines compare.

Sessions run on machines whose cores differ by a factor of three or more; a figure alone does not say
whether the code or the machine changed. Two references, both timed here and now:

- ``python``: a fixed pure-Python loop (10M additions), best of three, in seconds. The API and the
  pipeline are Python: their CPU per request scales with it.
- ``postgres``: the p50 of a ``SELECT 1`` round trip on the benchmark's connection, in milliseconds.
"""

from __future__ import annotations

import statistics
import time

import psycopg


def python_loop_seconds() -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        s = 0
        for i in range(10_000_000):
            s += i
        best = min(best, time.perf_counter() - t0)
    return best


def select_one_ms(url: str, rounds: int = 500) -> float:
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(rounds):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def describe(url: str | None) -> str:
    """The references, the round trip on ``url`` (a libpq URL) when given."""
    line = f"machine: 10M-step Python loop {python_loop_seconds():.2f} s (best of 3)"
    return line + (f", PostgreSQL SELECT 1 round trip p50 {select_one_ms(url):.3f} ms" if url else "")


if __name__ == "__main__":
    import sys

    print(describe(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"))
