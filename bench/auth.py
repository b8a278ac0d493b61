"""Authentication cost per request: the one round trip before and after principals (migration 0005).

    python bench/auth.py                      # fresh database on --admin-url
    python bench/auth.py --calls 5000 --concurrency 1 16

It times, straight against PostgreSQL (no HTTP, so a loaded machine's noise stays small), the query an
authenticated request makes:

- ``before key``: ``lily_auth_api_key`` (the key lookup until 0005; the secret was compared in Python)
- ``before jwt``: ``lily_auth_token_revoked`` (the logout check until 0005)
- ``after key|jwt, no limits``: ``lily_authenticate`` with rate limits off (tenant, key or user, role, groups)
- ``after key|jwt, limits``: the same taking a token from the principal's and the tenant's buckets

The variants run interleaved, round after round, so drift in the machine's load hits them alike. With
``--concurrency N`` N connections authenticate the same key at once: the worst case for the buckets'
row locks (one tenant, one key). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
import uuid
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import figures  # bench/figures.py, beside this script

from lily.store.migrate import migrate

TENANT = "bench"
KEY_ID = "k1"
SECRET = "s" * 43
USER = "alice"
JTI = uuid.uuid4().hex


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def setup(url: str) -> str:
    """Tenant, key and user, written as the application role writes them; returns the user's sid."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE lily_app")
        with conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [TENANT])
            conn.execute("INSERT INTO tenants (tenant_id, name) VALUES (%s, %s)", [TENANT, TENANT])
            conn.execute(
                "INSERT INTO api_keys (tenant_id, key_id, name, key_hash, role) VALUES (%s, %s, 'ci', %s, 'editor')",
                [TENANT, KEY_ID, hashlib.sha256(SECRET.encode()).hexdigest()],
            )
            row = conn.execute(
                "INSERT INTO users (tenant_id, username, password_hash, role) VALUES (%s, %s, 'x', 'editor')"
                " RETURNING sessions_id::text",
                [TENANT, USER],
            ).fetchone()
    assert row is not None
    return str(row[0])


def variants(sid: str) -> dict[str, tuple[str, list[Any]]]:
    key_hash = hashlib.sha256(SECRET.encode()).hexdigest()
    after = (
        "SELECT status, role, groups, key_name, retry_after"
        " FROM lily_authenticate(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    # Limits high enough never to refuse: the cost of counting, not of refusing.
    on = [1e9, 2e9, 1e9, 2e9]
    off = [0.0, 1.0, 0.0, 1.0]
    return {
        "before key": ("SELECT key_id, name, key_hash, role FROM lily_auth_api_key(%s, %s)", [TENANT, KEY_ID]),
        "before jwt": ("SELECT lily_auth_token_revoked(%s, %s)", [TENANT, JTI]),
        "after key, no limits": (after, [TENANT, "key", KEY_ID, None, None, key_hash, *off]),
        "after jwt, no limits": (after, [TENANT, "user", USER, JTI, sid, None, *off]),
        "after key, limits": (after, [TENANT, "key", KEY_ID, None, None, key_hash, *on]),
        "after jwt, limits": (after, [TENANT, "user", USER, JTI, sid, None, *on]),
    }


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await conn.execute("SET ROLE lily_app")
    return conn


async def run_one(conns: list[psycopg.AsyncConnection[Any]], sql: str, params: list[Any], calls: int) -> list[float]:
    """``calls`` queries spread over the connections, each connection one at a time; latencies in s."""
    latencies: list[float] = []

    async def worker(conn: psycopg.AsyncConnection[Any], n: int) -> None:
        for _ in range(n):
            start = time.perf_counter()
            cur = await conn.execute(sql, params, prepare=True)
            await cur.fetchall()
            latencies.append(time.perf_counter() - start)

    share = calls // len(conns)
    await asyncio.gather(*(worker(c, share) for c in conns))
    return latencies


def pct(values: list[float], p: float) -> float:
    return figures.percentile(values, p) * 1e6


async def bench(url: str, sid: str, calls: int, concurrency: list[int], rounds: int) -> None:
    print(f"{calls} calls per variant and concurrency, in {rounds} interleaved rounds; Python {sys.version.split()[0]}")
    print(f"{'variant':24} {'conns':>5} {'calls/s':>9} {'p50 µs':>8} {'p99 µs':>8}")
    for n in concurrency:
        conns = [await connect(url) for _ in range(n)]
        results: dict[str, list[float]] = {name: [] for name in variants(sid)}
        walls: dict[str, float] = dict.fromkeys(results, 0.0)
        for sql, params in variants(sid).values():  # warm-up: plans prepared, buckets created
            await run_one(conns, sql, params, 50 * n)
        for _ in range(rounds):
            for name, (sql, params) in variants(sid).items():
                start = time.perf_counter()
                results[name] += await run_one(conns, sql, params, calls // rounds)
                walls[name] += time.perf_counter() - start
        for name, lat in results.items():
            print(f"{name:24} {n:>5} {len(lat) / walls[name]:>9.0f} {pct(lat, 50):>8.0f} {pct(lat, 99):>8.0f}")
        for conn in conns:
            await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args(argv)
    name = f"lily_bench_auth_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = with_dbname(args.admin_url, name)
    try:
        migrate(url, partitions=4)
        sid = setup(url)
        asyncio.run(bench(url, sid, args.calls, args.concurrency, args.rounds))
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
