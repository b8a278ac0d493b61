"""API benchmark: create (``POST /metadata``) and read (``GET /metadata/{id}``) with 1 and 32 clients.

    python bench/api.py                          # fresh database on --admin-url, `lily serve` on a free port
    python bench/api.py --embedded               # the same against an embedded server in a temporary LILY_HOME
    python bench/api.py --requests 5000 --concurrency 1 8 32
    python bench/api.py --url http://127.0.0.1:8000 --key lily_acme.…   # a server that is already running

Without ``--url`` it creates a fresh database on the server named by ``--admin-url`` (a role that may
create databases; default ``postgresql://postgres@127.0.0.1:5432/postgres``), starts ``lily serve`` on
a loopback port with ``LILY_DATABASE_URL`` pointing at it, creates a tenant and an editor API key with
``lily admin``, runs the scenarios, stops the server and drops the database (``--keep`` keeps it).

``--tool`` (default ``auto``) picks the load generator for the point-read figure at 32 connections:
``wrk`` (C, random asset ids through a Lua script) when installed, else ``hey`` (one asset id), else
the Python client; the report says which ran. ``--paced-rate R`` then offers single creates at R/s and
reports accept→apply p50/p99 from ``bench/pacer.py``: open loop (each create is due at its time whatever
the server did with the ones before, and its latency counts from then), written by hand so that pacing
500 a second costs the machine little. The achieved rate is answers over the run's time.
``--workers N`` is passed to ``lily serve`` (API processes; default one per core). The spawned server's
rate limits are raised (``--key-rate``, ``--tenant-rate``; the defaults, 500/s per key and 1,000/s per
tenant, are below the 1,500 reads/s goal and one key sends everything): still taken on every request,
but never reached.

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
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from tempfile import NamedTemporaryFile, TemporaryDirectory
from urllib.parse import urlsplit

import figures  # bench/figures.py, beside this script
import httpx
import machine  # bench/machine.py, beside this script
import pacer  # bench/pacer.py, beside this script
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
        return figures.percentile(self.latencies, p) * 1000


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
        # Run as root, the embedded PostgreSQL runs as a user of its own and must be able to enter LILY_HOME.
        os.chmod(home, 0o711)
        env = {
            **os.environ,
            "LILY_HOME": home,
            "LILY_LOG_LEVEL": "WARNING",
            # Still taken on every request (leased, see lily.auth.leases), but above what this run sends.
            "LILY_RATE_LIMIT_PER_KEY": str(args.key_rate),
            "LILY_RATE_LIMIT_PER_TENANT": str(args.tenant_rate),
        }
        env.pop("LILY_DATABASE_URL", None)
        if database_url:
            env["LILY_DATABASE_URL"] = database_url
        port = free_port()
        workers = ["--workers", str(args.workers)] if args.workers else []
        # A session of its own, as a server started from its own terminal or by systemd has. Linux's
        # scheduler shares the CPU between sessions first (autogroups): in this script's session the
        # server's processes shared one share with wrk, and point-read p99 went from 32-38 to 46-77 ms.
        proc = subprocess.Popen(
            [*LILY, "serve", "--port", str(port), *workers], env=env, stdout=subprocess.DEVNULL, start_new_session=True
        )
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


async def scenarios(
    base: str, key: str, total: int, concurrency: list[int], warmup: int, ids: list[str]
) -> list[Result]:
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
    ids.extend(created)
    return results


Figures = tuple[int, int, float, float, float]  # requests, errors, req/s, p50 ms, p99 ms


def pick_tool(wanted: str) -> str:
    if wanted != "auto":
        if wanted != "python" and shutil.which(wanted) is None:
            raise SystemExit(f"{wanted} is not installed")
        return wanted
    return next((t for t in ("wrk", "hey") if shutil.which(t)), "python")


# wrk's report, as one line the script below parses (every wrk script here ends with it).
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %f %f\\n", summary.requests,
    e.status + e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""

_WRK_READS = """
local ids = {%(ids)s}
local headers = {["Authorization"] = "Bearer %(key)s"}
request = function()
  return wrk.format("GET", "%(path)s/metadata/" .. ids[math.random(#ids)], headers)
end
"""


def run_wrk(base: str, script: str, connections: int, seconds: int) -> Figures:
    """Run wrk (2 threads) with ``script`` against ``base``'s host; (requests, errors, req/s, p50, p99)."""
    parts = urlsplit(base)
    with NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(script + _WRK_DONE)
        f.flush()
        done = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", f.name, f"{parts.scheme}://{parts.netloc}/"],
            capture_output=True, text=True, timeout=seconds + 120,
        )  # fmt: skip
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    n, errors, micros, p50, p99 = line.split()[1:]
    return int(n), int(errors), int(n) / (int(micros) / 1e6), float(p50), float(p99)


def wrk_reads(base: str, key: str, ids: list[str], connections: int, seconds: int) -> Figures:
    """Point reads of random ids of the created assets."""
    script = _WRK_READS % {"ids": ",".join(f'"{i}"' for i in ids), "key": key, "path": urlsplit(base).path}
    return run_wrk(base, script, connections, seconds)


def hey_reads(
    base: str, key: str, ids: list[str], connections: int, seconds: int
) -> tuple[int, int, float, float, float]:
    """The same from hey (one asset id: hey sends one URL)."""
    done = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(connections), "-H", f"Authorization: Bearer {key}",
         f"{base}/metadata/{ids[0]}"],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    out = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    n = sum(int(v) for v in codes.values())
    return n, n - int(codes.get("200", 0)), rate, p50, p99


async def python_reads(
    base: str, key: str, ids: list[str], connections: int, seconds: int
) -> tuple[int, int, float, float, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                r = await http.get(f"/metadata/{random.choice(ids)}")
                latencies.append(time.perf_counter() - start)
                errors += r.status_code != 200

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(connections)))
    result = Result("read", connections, len(latencies), errors, time.perf_counter() - start, latencies)
    return result.requests, errors, result.rate, result.percentile(50), result.percentile(99)


async def paced_creates(base: str, key: str, rate: int, seconds: int) -> pacer.Paced:
    """``rate`` single creates per second on a fixed schedule (:mod:`pacer`), each a new asset; whatever is
    unanswered ``PACED_GRACE_SECONDS`` after the last due time counts as an error, so a server that cannot
    keep up still gets a figure (its errors say how far behind it was)."""
    run_id = uuid.uuid4().hex[:6]
    path = urlsplit(base).path + "/metadata"
    headers = {"Authorization": f"Bearer {key}"}

    def create(i: int) -> bytes:
        body = f'{{"qualified_name": "bench://{run_id}/paced/t{i}", "type": "table"}}'.encode()
        return pacer.json_post(base, path, headers, body)

    done = await pacer.pace(base, rate, seconds, create, grace=PACED_GRACE_SECONDS)
    if done.failures:
        print(f"{done.failures} of {done.due} creates got no answer (errors): {done.failure_kinds or 'unanswered'}")
    return done


# How long a paced run waits for answers after its last scheduled send.
PACED_GRACE_SECONDS = 30


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
    parser.add_argument("--workers", type=int, help="API processes for the spawned `lily serve`")
    parser.add_argument("--tool", choices=["auto", "wrk", "hey", "python"], default="auto")
    parser.add_argument("--connections", type=int, default=32, help="for the load generator's point reads")
    parser.add_argument("--seconds", type=int, default=10, help="length of the load generator's and paced runs")
    parser.add_argument("--paced-rate", type=int, default=500, help="creates per second (0: skip)")
    parser.add_argument(
        "--key-rate", type=float, default=10_000, help="LILY_RATE_LIMIT_PER_KEY of the spawned server (default 500)"
    )
    parser.add_argument(
        "--tenant-rate",
        type=float,
        default=20_000,
        help="LILY_RATE_LIMIT_PER_TENANT of the spawned server (default 1000)",
    )
    args = parser.parse_args()

    def go(base: str, key: str) -> None:
        print(
            f"target {base}, {args.requests} requests per scenario, Python {sys.version.split()[0]},"
            f" {os.cpu_count()} CPUs"
        )
        # A round trip only to the server this run's database is on (a --url server may use another).
        print(machine.describe(None if args.embedded or args.url else args.admin_url))
        if not args.url:
            print(
                f"rate limits raised to {args.key_rate:g}/s per key and {args.tenant_rate:g}/s per tenant (defaults"
                " 500 and 1000, below the read goal): still taken on every request, never reached"
            )
        ids: list[str] = []
        asyncio.run(scenarios(base, key, args.requests, args.concurrency, args.warmup, ids))
        tool = pick_tool(args.tool)
        print(f"\npoint reads, {args.connections} connections, {args.seconds} s, load generator: {tool}")
        print(f"{'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        reads = {"wrk": wrk_reads, "hey": hey_reads}.get(tool)
        if reads is not None:
            n, errors, rate, p50, p99 = reads(base, key, ids, args.connections, args.seconds)
        else:
            n, errors, rate, p50, p99 = asyncio.run(python_reads(base, key, ids, args.connections, args.seconds))
        print(f"{n:>9} {errors:>7} {rate:>8.0f} {p50:>8.1f} {p99:>8.1f}", flush=True)
        if args.paced_rate:
            print(
                f"\nsingle creates paced at {args.paced_rate}/s for {args.seconds} s (bench/pacer.py: open loop,"
                " latency from each create's due time to its answer, which comes once it is applied)"
            )
            print(f"{'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            done = asyncio.run(paced_creates(base, key, args.paced_rate, args.seconds))
            answered = len(done.latencies)
            print(
                f"{done.due:>9} {done.errors(201):>7} {answered / done.elapsed:>8.0f} {done.percentile(50):>8.1f}"
                f" {done.percentile(99):>8.1f}   answers by status: {dict(sorted(done.statuses.items()))}",
                flush=True,
            )

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
