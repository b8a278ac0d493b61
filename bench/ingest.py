"""Ingestion benchmark: single-asset API writes, bulk jobs, and plain COPY as the physical reference.

    python bench/ingest.py                                   # lily api + 2 lily worker processes
    python bench/ingest.py --mode serve                      # everything in one `lily serve`
    python bench/ingest.py --bulk-items 20000 --single-seconds 5
    python bench/ingest.py --admin-url postgresql://postgres@127.0.0.1:5432/postgres --keep

It creates a fresh database on the server named by ``--admin-url`` (a superuser), migrates it,
creates a tenant and an editor API key, starts the Lily processes itself on a loopback port, and prints:

(a) single-asset writes (``POST /metadata``) from 32 concurrent clients, each waiting for its write to
    be applied (read-your-writes, the default): requests/s, and p50/p99 accept→apply read from the log
    (``events.accepted_at`` → ``applied_at``); then an open-loop paced load (default 500 events/s,
    ``Prefer: respond-async``) and its accept→apply p50/p99.
(b) bulk jobs of ``--bulk-items`` assets (NDJSON, streamed): upload time (202), end-to-end assets/s
    (start of upload → last item applied), and accept→apply p50/p99. Two jobs: one creating the
    assets, one updating every one of them (the update path diffs against the current row).
(c) the same rows COPYed into a table shaped like ``assets`` (same columns, generated search column and
    indexes) but without row-level security: the physical reference, and the ratio to (b).

Figures are printed, never asserted. The load generator runs on the same machine and takes CPU too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lily import admin
from lily.domain.assets import asset_id_for
from lily.store.db import Database
from lily.store.migrate import migrate

TENANT = "bench"
LILY = [sys.executable, "-c", "from lily.cli import main; main()"]


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


# ------------------------------------------------------------------------------------------ data


def asset(i: int, generation: int = 0) -> dict[str, Any]:
    """A realistic table asset of ~300 bytes; ``generation`` changes a few fields for updates."""
    return {
        "qualified_name": f"snowflake://acme/analytics.schema_{i % 97}.table_{i}",
        "type": "table",
        "description": f"Daily snapshot of business entity {i}, generation {generation}",
        "owners": [f"team-{i % 13}"],
        "tags": ["bench", f"domain-{i % 7}"] + (["pii"] if i % 10 == 0 else []),
        "attributes": {"rows": i * 17 + generation, "format": "parquet", "gen": generation},
    }


def ndjson(n: int, generation: int) -> bytes:
    return b"".join(orjson.dumps(asset(i, generation)) + b"\n" for i in range(n))


# --------------------------------------------------------------------------------------- servers


@dataclass
class Cluster:
    url: str
    procs: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for_line(proc: subprocess.Popen[bytes], marker: bytes, what: str) -> None:
    """Read the process's stderr until ``marker`` appears (uvicorn's or the worker's start-up line)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if marker in line:
            return
    raise RuntimeError(f"{what} exited before it was ready (code {proc.wait()})")


def start_cluster(database_url: str, home: Path, mode: str, workers: int, port: int, batch_size: int | None) -> Cluster:
    env = {
        **os.environ,
        "LILY_DATABASE_URL": database_url,
        "LILY_HOME": str(home),
        "LILY_JWT_SECRET": "bench-" + "x" * 40,
        "LILY_PORT": str(port),
        "LILY_LOG_LEVEL": "WARNING",
        "LILY_POOL_MAX_SIZE": "40",
        # Still taken on every request, but above what one key sends here: wrk's unpaced single writes
        # measure the pipeline, not the defaults (500/s per key, 1,000/s per tenant), which answer 429.
        "LILY_RATE_LIMIT_PER_KEY": "10000",
        "LILY_RATE_LIMIT_PER_TENANT": "20000",
    }
    if batch_size:
        env["LILY_WORKER_BATCH_SIZE"] = str(batch_size)
    procs: list[subprocess.Popen[bytes]] = []
    if mode == "serve":
        env["LILY_WORKERS_IN_SERVE"] = str(workers)
        procs.append(subprocess.Popen([*LILY, "--log-level", "INFO", "serve"], env=env, stderr=subprocess.PIPE))
    else:
        procs.append(subprocess.Popen([*LILY, "--log-level", "INFO", "api"], env=env, stderr=subprocess.PIPE))
        for _ in range(workers):
            procs.append(subprocess.Popen([*LILY, "--log-level", "INFO", "worker"], env=env, stderr=subprocess.PIPE))
    _wait_for_line(procs[0], b"Application startup complete", "the API")
    for proc in procs[1:]:
        _wait_for_line(proc, b"consuming", "a worker")
    for i, proc in enumerate(procs):
        # Keep draining stderr (a chatty process must never block on a full pipe) into a log file.
        log = home / ("api.log" if i == 0 else f"worker-{i}.log")
        threading.Thread(target=_drain, args=(proc, log), daemon=True).start()
    return Cluster(f"http://127.0.0.1:{port}", procs)


def _drain(proc: subprocess.Popen[bytes], path: Path) -> None:
    assert proc.stderr is not None
    with path.open("ab") as out:
        for line in proc.stderr:
            out.write(line)
            out.flush()


# ---------------------------------------------------------------------------------- measurements


async def latencies(conn: psycopg.AsyncConnection[Any], where: str, params: list[Any]) -> tuple[int, float, float]:
    """(events, p50 ms, p99 ms) of accept→apply over the events matching ``where``."""
    cur = await conn.execute(
        "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY lat),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY lat)"
        " FROM (SELECT extract(epoch FROM applied_at - accepted_at) * 1000 AS lat FROM events"
        f" WHERE status = 'applied' AND {where}) t",
        params,
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0), float(row[2] or 0)


async def single_closed_loop(
    client: httpx.AsyncClient, key: str, clients: int, seconds: float, tag: str
) -> tuple[int, float]:
    """``clients`` clients, each writing and waiting for the write to be applied, for ``seconds``."""
    deadline = time.perf_counter() + seconds
    done = 0
    headers = {"Authorization": f"Bearer {key}"}

    async def one(c: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            body = asset(1_000_000 + (c * 100_000 + i) % 5000, generation=i)
            r = await client.post("/lily/v1/metadata", json=body, headers={**headers, "X-Request-Id": f"{tag}-{c}-{i}"})
            if r.status_code not in (200, 201):
                raise RuntimeError(f"single write failed: {r.status_code} {r.text}")
            done += 1
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    return done, time.perf_counter() - start


def paced_from_processes(
    url: str, key: str, rate: float, seconds: float, tag: str, processes: int
) -> tuple[int, float]:
    """The paced load from several OS processes, each sending ``rate / processes`` writes per second.

    One Python process with httpx tops out near 100 requests/s on this machine's cores, far below the
    rate under test; the server, not the load generator, must be what the figure measures.
    """
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes) as pool:
        futures = [
            pool.submit(_paced_process, url, key, rate / processes, seconds, f"{tag}-{k}", k) for k in range(processes)
        ]
        results = [f.result() for f in futures]
    return sum(n for n, _ in results), max(s for _, s in results)


def _paced_process(url: str, key: str, rate: float, seconds: float, tag: str, k: int) -> tuple[int, float]:
    async def run() -> tuple[int, float]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            return await single_paced(client, key, rate, seconds, tag, first=3_000_000 + k * 1_000_000)

    return asyncio.run(run())


async def single_paced(
    client: httpx.AsyncClient, key: str, rate: float, seconds: float, tag: str, first: int = 2_000_000
) -> tuple[int, float]:
    """Open loop: one write every 1/rate s (async, 202), whatever the server's speed."""
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * seconds)
    tasks = []
    sem = asyncio.Semaphore(64)  # bounded in-flight requests per process (and file descriptors server-side)

    async def one(i: int) -> None:
        async with sem:
            r = await client.post(
                "/lily/v1/metadata",
                json=asset(first + i % 20_000, generation=i),
                headers={**headers, "X-Request-Id": f"{tag}-{i}"},
            )
            if r.status_code != 202:
                raise RuntimeError(f"paced write failed: {r.status_code} {r.text}")

    for i in range(total):
        # Pacing against the loop's clock: the schedule is the load, not a synchronisation.
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return total, loop.time() - start


async def wait_applied(
    conn: psycopg.AsyncConnection[Any], where: str, params: list[Any], n: int, timeout: float = 120
) -> None:
    """Wait until ``n`` events matching ``where`` are decided, listening for applied offsets."""
    listener = await psycopg.AsyncConnection.connect(conn.info.dsn, autocommit=True)
    try:
        await listener.execute("LISTEN lily_applied")
        deadline = time.perf_counter() + timeout
        while True:
            cur = await conn.execute(f"SELECT count(*) FROM events WHERE status <> 'accepted' AND {where}", params)
            row = await cur.fetchone()
            if row and row[0] >= n:
                return
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {row[0] if row else 0} of {n} events applied")
            async for _ in listener.notifies(timeout=1.0, stop_after=1):
                pass
    finally:
        await listener.close()


async def chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def bulk_job(client: httpx.AsyncClient, key: str, data: bytes) -> tuple[dict[str, Any], float, float]:
    """Upload one NDJSON job and follow it; (final status, upload seconds, end-to-end seconds)."""
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    r = await client.post(
        "/lily/v1/metadata/bulk",
        content=chunks(data),
        headers={**headers, "Content-Type": "application/x-ndjson", "Content-Length": str(len(data))},
    )
    if r.status_code != 202:
        raise RuntimeError(f"bulk upload failed: {r.status_code} {r.text}")
    uploaded = time.perf_counter() - start
    job = r.json()
    while True:
        r = await client.get(f"/lily/v1/metadata/bulk/status/{job['job_id']}", params={"wait": 30}, headers=headers)
        status: dict[str, Any] = r.json()
        if status["state"] not in ("queued", "running"):
            return status, uploaded, time.perf_counter() - start


def copy_reference(url: str, n: int) -> float:
    """Seconds to COPY the same rows into an RLS-free twin of ``assets`` (columns, indexes, tsvector)."""
    rows = []
    now = datetime.now(UTC)
    for i in range(n):
        a = asset(i)
        rows.append(
            (
                TENANT,
                asset_id_for(TENANT, a["qualified_name"]),
                a["qualified_name"],
                a["type"],
                a["qualified_name"].rsplit(".", 1)[-1],
                a["description"],
                a["owners"],
                a["tags"],
                orjson.dumps(a["attributes"]).decode(),
                False,
                1,
                now,
                now,
            )
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_reference")
        # LIKE … INCLUDING ALL copies columns, defaults, the generated column and the indexes, not RLS.
        conn.execute("CREATE TABLE copy_reference (LIKE assets INCLUDING ALL)")
        start = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY copy_reference (tenant_id, asset_id, qualified_name, type, name, description, owners, tags,"
                " attributes, placeholder, version, created_at, updated_at) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE copy_reference")
    return elapsed


# -------------------------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    dbname = f"lily_bench_ingest_{os.getpid()}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    url = with_dbname(args.admin_url, dbname)
    cluster: Cluster | None = None
    try:
        migrate(url, partitions=args.partitions)
        db = Database(url, min_size=1, max_size=2)
        await db.open()
        await admin.create_tenant(db, TENANT)
        key = await admin.create_api_key(db, TENANT, "bench", "editor")
        await db.close()
        with TemporaryDirectory() as home:
            logs = Path(args.logs or home)
            logs.mkdir(parents=True, exist_ok=True)
            cluster = start_cluster(url, logs, args.mode, args.workers, args.port, args.batch_size)
            print(
                f"lily: mode={args.mode} workers={args.workers} partitions={args.partitions}"
                f" batch={args.batch_size or 'default'} cpus={os.cpu_count()}"
            )
            # Shorter than uvicorn's 5 s keep-alive, so the client never reuses a connection the server is closing.
            limits = httpx.Limits(max_connections=300, max_keepalive_connections=300, keepalive_expiry=2.0)
            async with (
                httpx.AsyncClient(base_url=cluster.url, timeout=120, limits=limits) as client,
                await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
            ):
                if args.single_seconds > 0:
                    await single_benchmarks(client, conn, key, args)
                if args.bulk_items > 0:
                    await bulk_benchmarks(client, conn, key, url, args)
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        else:
            print(f"kept database {dbname}")


_WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local body = '{"qualified_name":"pg://wrk/%(tag)s/t' .. counter .. '-' .. math.random(1, 1000000000) ..
               '","type":"table","tags":["bench"]}'
  return wrk.format("POST", "/lily/v1/metadata", {["Authorization"] = "Bearer %(key)s",
    ["Content-Type"] = "application/json", ["Prefer"] = "respond-async",
    ["X-Request-Id"] = "%(tag)s-" .. counter}, body)
end
"""


def wrk_load(url: str, key: str, seconds: float, connections: int, tag: str) -> tuple[float, int] | None:
    """Single writes from ``wrk`` (C, Debian's package), which a Python client cannot keep up with:
    (accepted writes/s, writes accepted), or None when wrk is not installed."""
    import shutil
    import tempfile

    if shutil.which("wrk") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_WRK_SCRIPT % {"tag": tag, "key": key})
        script.flush()
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    rate = float(next(line for line in out.splitlines() if "Requests/sec" in line).split()[-1])
    sent = int(next(line for line in out.splitlines() if " requests in " in line).split()[0])
    # Only the 202s were appended: a refusal (429, 503) has no event to wait for.
    refused = sum(int(line.split()[-1]) for line in out.splitlines() if "Non-2xx or 3xx responses" in line)
    return rate * (sent - refused) / sent if sent else 0.0, sent - refused


async def single_benchmarks(
    client: httpx.AsyncClient, conn: psycopg.AsyncConnection[Any], key: str, args: argparse.Namespace
) -> None:
    tag = f"a{uuid.uuid4().hex[:6]}"
    await single_closed_loop(client, key, args.clients, 2.0, f"{tag}-warm")  # warm pools and caches
    n, seconds = await single_closed_loop(client, key, args.clients, args.single_seconds, tag)
    count, p50, p99 = await latencies(
        conn, "request_id LIKE %s AND request_id NOT LIKE %s", [f"{tag}-%", f"{tag}-warm%"]
    )
    print(
        f"(a) single writes, {args.clients} clients waiting for apply: {n / seconds:,.0f} events/s"
        f" ({n} in {seconds:.1f}s); accept→apply p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    tag = f"p{uuid.uuid4().hex[:6]}"
    total, sent_in = await asyncio.to_thread(
        paced_from_processes, str(client.base_url), key, args.rate, args.single_seconds, tag, args.load_processes
    )
    await wait_applied(conn, "request_id LIKE %s", [f"{tag}-%"], total)
    count, p50, p99 = await latencies(conn, "request_id LIKE %s", [f"{tag}-%"])
    print(
        f"    paced {args.rate:,.0f} events/s (respond-async): {total} sent in {sent_in:.1f}s"
        f" (achieved {total / sent_in:,.0f}/s), {count} applied;"
        f" accept→apply p50 {p50:.1f} ms, p99 {p99:.1f} ms  (goal p99 < 200 ms)"
    )
    tag = f"w{uuid.uuid4().hex[:6]}"
    measured = await asyncio.to_thread(wrk_load, str(client.base_url), key, args.single_seconds, 16, tag)
    if measured is None:
        print("    wrk not installed (apt-get install wrk): no C-driven load")
        return
    rate, sent = measured
    await wait_applied(conn, "request_id LIKE %s", [f"{tag}-%"], sent)
    count, p50, p99 = await latencies(conn, "request_id LIKE %s", [f"{tag}-%"])
    print(
        f"    wrk, 16 connections (respond-async): {rate:,.0f} events/s accepted, {count} applied;"
        f" accept→apply p50 {p50:.1f} ms, p99 {p99:.1f} ms  (goal p99 < 200 ms at 500/s)"
    )


async def bulk_benchmarks(
    client: httpx.AsyncClient, conn: psycopg.AsyncConnection[Any], key: str, url: str, args: argparse.Namespace
) -> None:
    n = args.bulk_items
    best = 0.0
    for generation, label in ((0, "create"), (1, "update")):
        data = ndjson(n, generation)
        status, uploaded, total = await bulk_job(client, key, data)
        assert status["applied"] == n, status
        _, p50, p99 = await latencies(conn, "bulk_job_id = %s", [uuid.UUID(status["job_id"])])
        best = max(best, n / total)
        print(
            f"(b) bulk {label} {n:,} assets ({len(data) / 2**20:.1f} MiB NDJSON): accepted in {uploaded:.2f}s,"
            f" applied end to end in {total:.2f}s = {n / total:,.0f} assets/s;"
            f" accept→apply p50 {p50 / 1000:.2f}s, p99 {p99 / 1000:.2f}s"
        )
    copy_s = copy_reference(url, n)
    print(
        f"(c) COPY of the same {n:,} rows into an RLS-free twin of assets: {copy_s:.2f}s ="
        f" {n / copy_s:,.0f} rows/s; bulk end to end is {(n / copy_s) / best:.1f}x slower"
        f" (it also writes the log, versions and audit, and updates the log per event)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--admin-url", default=os.environ.get("LILY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument(
        "--mode",
        choices=("split", "serve"),
        default="split",
        help="split: lily api + N lily worker processes; serve: one lily serve with N workers",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--partitions", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=None, help="LILY_WORKER_BATCH_SIZE")
    p.add_argument("--port", type=int, default=random.randint(20000, 40000))
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--load-processes", type=int, default=4, help="OS processes sending the paced load")
    p.add_argument("--single-seconds", type=float, default=10.0)
    p.add_argument("--bulk-items", type=int, default=100_000)
    p.add_argument("--keep", action="store_true", help="keep the database afterwards")
    p.add_argument("--logs", default=None, help="directory for the Lily processes' logs (default: temporary)")
    return p.parse_args(argv)


def main() -> None:
    asyncio.run(run(parse_args()))


if __name__ == "__main__":
    main()
