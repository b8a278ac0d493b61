"""API benchmark: create (``POST /metadata``) and read (``GET /metadata/{id}``) with 1 and 32 clients.

    python bench/api.py                          # fresh database on --admin-url, `lily serve` on a free port
    python bench/api.py --embedded               # the same against an embedded server in a temporary LILY_HOME
    python bench/api.py --requests 5000 --concurrency 1 8 32
    python bench/api.py --url http://127.0.0.1:8000 --key lily_acme.…   # a server that is already running

Without ``--url`` it creates a fresh database on the server named by ``--admin-url`` (a role that may
create databases; default ``postgresql://postgres@127.0.0.1:5432/postgres``), starts ``lily serve`` on
a loopback port with ``LILY_DATABASE_URL`` pointing at it, creates a tenant and an editor API key with
``lily admin``, runs the scenarios, stops the server and drops the database (``--keep`` keeps it).

Each scenario sends a bounded number of requests (``--requests``, default 2000) from N concurrent
clients (one ``httpx.AsyncClient`` each, keep-alive), after a short warm-up, and reports requests/s
(completed requests over wall time) and p50/p99 latency. A create waits for the pipeline to apply the
write (read-your-writes, the API's default), so its latency is accept + apply. Reads pick random assets
created earlier. Figures are printed, never asserted; the load generator shares the machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from tempfile import TemporaryDirectory

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

LILY = [sys.executable, "-c", "from lily.cli import main; main()"]
TENANT = "bench"


@dataclass
class Result:
    scenario: str
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def lily(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*LILY, *args], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"lily {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.strip()


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Poll the readiness endpoint (bounded) until the server answers."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"lily serve exited with {proc.returncode}")
            try:
                if http.get(f"{base}/system/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise SystemExit("lily serve did not become healthy")


@contextmanager
def fresh_database(admin_url: str, keep: bool) -> Iterator[str]:
    name = f"lily_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield with_dbname(admin_url, name)
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def spawned_server(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(base URL, editor key) of a `lily serve` this script starts and stops."""
    with TemporaryDirectory(prefix="lily-bench-") as home, bench_database(args) as database_url:
        env = {**os.environ, "LILY_HOME": home, "LILY_LOG_LEVEL": "WARNING"}
        env.pop("LILY_DATABASE_URL", None)
        if database_url:
            env["LILY_DATABASE_URL"] = database_url
        port = free_port()
        proc = subprocess.Popen([*LILY, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/lily/v1"
        try:
            wait_healthy(base, proc)
            lily(env, "admin", "create-tenant", TENANT)
            key = lily(env, "admin", "create-api-key", TENANT, "bench", "--role", "editor")
            yield base, key
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def bench_database(args: argparse.Namespace) -> Iterator[str | None]:
    """A fresh database on --admin-url, or None for the embedded server (in the temporary LILY_HOME)."""
    if args.embedded:
        yield None
        return
    with fresh_database(args.admin_url, args.keep) as url:
        yield url


async def run(
    clients: int,
    total: int,
    headers: dict[str, str],
    base: str,
    request: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    name: str,
) -> Result:
    counter = iter(range(total))
    latencies: list[float] = []
    errors = 0

    async def client_loop() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            for i in counter:
                start = time.perf_counter()
                r = await request(http, i)
                latencies.append(time.perf_counter() - start)
                if r.status_code >= 300:
                    errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return Result(name, clients, total, errors, time.perf_counter() - start, latencies)


async def scenarios(base: str, key: str, total: int, concurrency: list[int], warmup: int) -> list[Result]:
    headers = {"Authorization": f"Bearer {key}"}
    created: list[str] = []
    run_id = uuid.uuid4().hex[:6]

    async def create(http: httpx.AsyncClient, i: int, prefix: str) -> httpx.Response:
        r = await http.post(
            "/metadata",
            json={
                "qualified_name": f"bench://{run_id}/{prefix}/t{i}",
                "type": "table",
                "description": f"benchmark table {i}",
                "tags": ["bench", f"g{i % 10}"],
                "attributes": {"i": i},
            },
        )
        if r.status_code == 201:
            created.append(r.json()["asset_id"])
        return r

    async def read(http: httpx.AsyncClient, i: int) -> httpx.Response:
        return await http.get(f"/metadata/{random.choice(created)}")

    # Warm-up: connections, pools, caches, JIT-less Python paths; not measured.
    await run(4, warmup, headers, base, lambda h, i: create(h, i, "warmup"), "warmup")
    await run(4, warmup, headers, base, read, "warmup")

    def create_as(clients: int) -> Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]:
        return lambda http, i: create(http, i, f"c{clients}")

    results = []
    print(HEADER, flush=True)
    for clients in concurrency:
        results.append(await run(clients, total, headers, base, create_as(clients), "create  POST /metadata"))
        print(row(results[-1]), flush=True)
    for clients in concurrency:
        results.append(await run(clients, total, headers, base, read, "read    GET /metadata/{id}"))
        print(row(results[-1]), flush=True)
    return results


HEADER = f"{'scenario':<28} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"


def row(r: Result) -> str:
    return (
        f"{r.scenario:<28} {r.clients:>7} {r.requests:>8} {r.errors:>6} {r.rate:>8.0f}"
        f" {r.percentile(50):>8.1f} {r.percentile(99):>8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="base URL of a running server (…/lily/v1 is appended when missing)")
    parser.add_argument("--key", help="an editor API key, with --url")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--embedded", action="store_true", help="use the embedded server, not --admin-url")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()

    def go(base: str, key: str) -> None:
        print(
            f"target {base}, {args.requests} requests per scenario, Python {sys.version.split()[0]},"
            f" {os.cpu_count()} CPUs"
        )
        asyncio.run(scenarios(base, key, args.requests, args.concurrency, args.warmup))

    if args.url:
        if not args.key:
            parser.error("--url needs --key (an editor API key: lily admin create-api-key TENANT NAME --role editor)")
        base = args.url.rstrip("/")
        go(base if base.endswith("/lily/v1") else base + "/lily/v1", args.key)
        return
    with spawned_server(args) as (base, key):
        go(base, key)


if __name__ == "__main__":
    main()
