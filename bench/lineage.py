"""Lineage traversal benchmark: a layered DAG of ≥1M assets and ≥2M edges, then latency per depth.

    python bench/lineage.py --url postgresql://postgres@127.0.0.1:5432/postgres
    LILY_BENCH_ASSETS=200000 python bench/lineage.py --url ...      # smaller graph
    python bench/lineage.py --url ... --keep                        # keep the database afterwards
    python bench/lineage.py --url ... --reuse lily_bench_lineage_x  # measure a kept database again

The graph (tenant ``bench``): 1% of the assets are jobs, the rest tables in ``--layers`` layers.
Each table takes 1-3 inputs (mean ~2.05), 90% from nearby positions of the previous layer (pipelines
are local), 10% from 2-5 layers up; 20% of the edges carry a job. Twenty hub tables feed 5,000 random
tables each (a calendar or currency dimension), 200 back edges close cycles, and 10% of the edges get
two column mappings. Two noise tenants get a tenth of the volume each. Data goes in with COPY into
tables stripped of indexes and keys, which are rebuilt afterwards, then VACUUM ANALYZE.

Queries run through ``lily.store.lineage`` on the application pool (``lily_app`` role, RLS on, one
tenant transaction per call), one at a time, after a warm-up. The recursive-CTE rows are the
alternative that the level-by-level walk was measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import figures  # bench/figures.py, beside this script
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import tuple_row

from lily.domain.lineage import MAX_DEPTH, MAX_NODE_LIMIT, Step
from lily.store import lineage
from lily.store.db import Conn, Database
from lily.store.migrate import migrate

TENANT = "bench"
NOISE_TENANTS = ("noise-a", "noise-b")
TABLES = ("assets", "lineage_edges", "column_lineage")
HUBS, HUB_FANOUT, BACK_EDGES, WINDOW = 20, 5000, 200, 50
CHUNK = 20_000
MIN_ASSETS = 20_000


# ---------------------------------------------------------------- schema: strip keys, load, rebuild


@dataclass
class Stripped:
    keys: list[tuple[str, str, str]]  # (table, name, definition) of primary keys and unique constraints
    foreign: list[tuple[str, str, str]]
    indexes: list[str]


def strip(conn: psycopg.Connection[Any]) -> Stripped:
    """Drop the keys and indexes of the bulk-loaded tables (and foreign keys pointing at them)."""
    tables = list(TABLES)
    cons = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype FROM pg_constraint"
        " WHERE contype IN ('p', 'u', 'f')"
        " AND (conrelid = ANY(%s::regclass[]) OR confrelid = ANY(%s::regclass[]))",
        [tables, tables],
    ).fetchall()
    idx = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = ANY(%s::regclass[]) AND NOT EXISTS ("
        "  SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype IN ('p', 'u'))",
        [tables],
    ).fetchall()
    found = Stripped(
        keys=[(t, n, d) for t, n, d, kind in cons if kind in "pu"],
        foreign=[(t, n, d) for t, n, d, kind in cons if kind == "f"],
        indexes=[d for _, d in idx],
    )
    for table, name, _ in found.foreign + found.keys:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.SQL(table), sql.Identifier(name)))
    for name, _ in idx:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
    return found


def rebuild(conn: psycopg.Connection[Any], stripped: Stripped) -> None:
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("SET max_parallel_maintenance_workers = 2")
    add = "ALTER TABLE {} ADD CONSTRAINT {} {}"
    for table, name, definition in stripped.keys:
        query = sql.SQL(add).format(sql.SQL(table), sql.Identifier(name), sql.SQL(definition))
        step(f"  key {name}", conn.execute, query)
    for definition in stripped.indexes:
        step(f"  {definition.split(' ON ')[0].split()[-1]}", conn.execute, definition.encode())
    for table, name, definition in stripped.foreign:
        query = sql.SQL(add).format(sql.SQL(table), sql.Identifier(name), sql.SQL(definition))
        step(f"  foreign key {name}", conn.execute, query)


def step(label: str, fn: Callable[..., object], *args: Any) -> None:
    t0 = time.perf_counter()
    fn(*args)
    print(f"{label:<52} {time.perf_counter() - t0:8.1f} s", flush=True)


# ---------------------------------------------------------------- the graph


class Graph:
    """One tenant's generated graph, streamed as COPY text so 2M edges never sit in memory as rows."""

    def __init__(self, tenant: str, assets: int, layers: int, seed: int) -> None:
        self.tenant, self.rng = tenant, random.Random(seed)
        self.ids = [str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for _ in range(assets)]
        self.jobs = max(HUBS + 1, assets // 100)
        self.tables = assets - self.jobs
        self.layers = layers
        self.width = self.tables // layers
        self.edges = 0

    def layer_of(self, t: int) -> int:
        return min(t // self.width, self.layers - 1)

    def asset_lines(self) -> Iterator[str]:
        stamp = "2025-01-01 00:00:00+00"
        for j in range(self.jobs):
            yield f"{self.tenant}\t{self.ids[j]}\tbench://jobs/job{j:07d}\tjob\tjob{j}\t1\t{stamp}\t{stamp}\n"
        for t in range(self.tables):
            layer, pos = self.layer_of(t), t % self.width
            qn = f"bench://warehouse/l{layer:02d}/t{t:07d}"
            yield f"{self.tenant}\t{self.ids[self.jobs + t]}\t{qn}\ttable\tl{layer}_{pos}\t1\t{stamp}\t{stamp}\n"

    def edge_lines(self) -> Iterator[str]:
        rng, ids, jobs, width = self.rng, self.ids, self.jobs, self.width
        first_up = [-1] * self.tables

        def line(up: int, down: int, job: int | None) -> str:
            self.edges += 1
            proc = ids[job] if job is not None else "\\N"
            return f"{self.tenant}\t{ids[jobs + up]}\t{ids[jobs + down]}\t{proc}\n"

        for t in range(self.width, self.tables):
            layer, pos = self.layer_of(t), t % width
            r = rng.random()
            fan_in = 1 if r < 0.25 else 2 if r < 0.70 else 3
            ups = set()
            for _ in range(fan_in):
                back = rng.randint(2, min(layer, 5)) if layer >= 2 and rng.random() < 0.1 else 1
                ups.add((layer - back) * width + (pos + rng.randint(-WINDOW, WINDOW)) % width)
            first_up[t] = min(ups)
            for up in ups:
                yield line(up, t, rng.randrange(HUBS, jobs) if rng.random() < 0.2 else None)
        # Hubs carry their own job, so their edges never collide with a regular edge's identity.
        for hub in range(HUBS):
            for down in rng.sample(range(self.width, self.tables), min(HUB_FANOUT, self.tables // 4)):
                yield line(hub, down, hub)
        back_edges: set[tuple[int, int]] = set()
        while len(back_edges) < BACK_EDGES:
            start = end = rng.randrange(3 * width, self.tables)
            for _ in range(3):
                end = first_up[end]
            back_edges.add((start, end))
        for start, end in back_edges:
            yield line(start, end, None)


def copy_lines(conn: psycopg.Connection[Any], statement: str, lines: Iterator[str]) -> None:
    with conn.cursor() as cur, cur.copy(statement.encode()) as copy:
        buf: list[str] = []
        for text in lines:
            buf.append(text)
            if len(buf) >= CHUNK:
                copy.write("".join(buf))
                buf.clear()
        copy.write("".join(buf))


def load(url: str, assets: int, layers: int, seed: int) -> None:
    graphs = [Graph(TENANT, assets, layers, seed)]
    graphs += [Graph(t, assets // 10, layers, seed + i + 1) for i, t in enumerate(NOISE_TENANTS)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tenants (tenant_id, name) SELECT t, t FROM unnest(%s::text[]) t",
            [[g.tenant for g in graphs]],
        )
        stripped = strip(conn)
        for g in graphs:
            step(
                f"copy assets ({g.tenant}, {len(g.ids):,})",
                copy_lines,
                conn,
                "COPY assets (tenant_id, asset_id, qualified_name, type, name, version, created_at,"
                " updated_at) FROM STDIN",
                g.asset_lines(),
            )
            step(
                f"copy edges ({g.tenant})",
                copy_lines,
                conn,
                "COPY lineage_edges (tenant_id, upstream_id, downstream_id, process_id) FROM STDIN",
                g.edge_lines(),
            )
            print(f"  {g.edges:,} edges", flush=True)
        step(
            "column mappings (10% of edges, 2 each)",
            conn.execute,
            "INSERT INTO column_lineage (tenant_id, edge_id, downstream_column, upstream_column, transformation)"
            " SELECT e.tenant_id, e.edge_id, 'c' || g, 'c' || g, CASE g WHEN 1 THEN 'sum(c1)' END"
            " FROM lineage_edges e TABLESAMPLE BERNOULLI (10) REPEATABLE (7), generate_series(1, 2) g",
        )
        rebuild(conn, stripped)
        step("vacuum analyze", conn.execute, "VACUUM ANALYZE")
        # Otherwise the first queries pay for writing out the pages the load and VACUUM dirtied.
        step("checkpoint", conn.execute, "CHECKPOINT")


# ---------------------------------------------------------------- the recursive CTE alternative

_CTE = {
    "downstream": ("upstream_id", "downstream_id"),
    "upstream": ("downstream_id", "upstream_id"),
}


async def traverse_cte(conn: Conn, tenant: str, root: UUID, direction: Step, depth: int, limit: int) -> int:
    """The same answer (nodes, edges among them, node data) from one recursive CTE. UNION keeps cycles
    finite but dedupes (node, depth) pairs only, so a node reached at several depths is re-expanded."""
    near, far = _CTE[direction]
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        f"WITH RECURSIVE walk(node, depth) AS (SELECT %(root)s::uuid, 0 UNION"
        f" SELECT e.{far}, w.depth + 1 FROM walk w JOIN lineage_edges e"
        f"  ON e.tenant_id = %(tenant)s AND e.{near} = w.node WHERE w.depth < %(depth)s)"
        " SELECT node, min(depth) FROM walk GROUP BY node ORDER BY 2 LIMIT %(limit)s",
        {"root": root, "tenant": tenant, "depth": depth, "limit": limit + 1},
    )
    nodes = [n for n, _ in await cur.fetchall()][:limit]
    await cur.execute(
        "SELECT edge_id, upstream_id, downstream_id, process_id FROM lineage_edges WHERE tenant_id = %s"
        f" AND {near} = ANY(%s::uuid[]) AND {far} = ANY(%s::uuid[])",
        [tenant, nodes, nodes],
    )
    await cur.fetchall()
    await cur.execute(
        "SELECT asset_id, qualified_name, type, name, placeholder FROM assets"
        " WHERE tenant_id = %s AND asset_id = ANY(%s::uuid[])",
        [tenant, nodes],
    )
    return len(await cur.fetchall())


# ---------------------------------------------------------------- measuring


@dataclass
class Row:
    label: str
    times: list[float]
    nodes: list[int]
    truncated: int

    def pct(self, p: float) -> float:
        return figures.percentile(self.times, p) * 1000


async def timed(
    db: Database, label: str, starts: Sequence[UUID], call: Callable[[Conn, UUID], Awaitable[tuple[int, bool]]]
) -> Row:
    row = Row(label, [], [], 0)
    for start in starts:
        t0 = time.perf_counter()
        async with db.tenant(TENANT) as conn:
            count, cut = await call(conn, start)
        row.times.append(time.perf_counter() - t0)
        row.nodes.append(count)
        row.truncated += cut
    return row


def walk_call(
    direction: lineage.Direction, depth: int, limit: int = 1000, columns: bool = False
) -> Callable[[Conn, UUID], Awaitable[tuple[int, bool]]]:
    async def call(conn: Conn, start: UUID) -> tuple[int, bool]:
        graph = await lineage.traverse(conn, TENANT, start, direction, depth, limit, columns)
        return len(graph.nodes), graph.truncated

    return call


def cte_call(direction: Step, depth: int) -> Callable[[Conn, UUID], Awaitable[tuple[int, bool]]]:
    async def call(conn: Conn, start: UUID) -> tuple[int, bool]:
        count = await traverse_cte(conn, TENANT, start, direction, depth, 1000)
        return count, count >= 1000

    return call


def impact_call(depth: int) -> Callable[[Conn, UUID], Awaitable[tuple[int, bool]]]:
    async def call(conn: Conn, start: UUID) -> tuple[int, bool]:
        report = await lineage.impact(conn, TENANT, start, depth, 1000)
        return len(report.assets), report.truncated

    return call


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'query':<38}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'nodes avg':>11}{'nodes max':>11}{'trunc %':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.label:<38}{len(r.times):>5}{r.pct(50):>9.1f}{r.pct(99):>9.1f}{max(r.times) * 1000:>9.1f}"
            f"{sum(r.nodes) / len(r.nodes):>11.0f}{max(r.nodes):>11}{100 * r.truncated / len(r.times):>9.1f}"
        )


async def measure(url: str, count: int, compare_cte: bool) -> None:
    db = Database(url, min_size=1, max_size=2)
    await db.open()
    try:
        async with db.tenant(TENANT) as conn:
            await conn.execute("SELECT setseed(0.42)")
            cur = await conn.execute(
                "SELECT asset_id FROM assets WHERE tenant_id = %s AND type = 'table' ORDER BY random() LIMIT %s",
                [TENANT, count],
                prepare=False,
            )
            starts = [r["asset_id"] for r in await cur.fetchall()]
            # Jobs as roots: a job is a node between the inputs and outputs of the edges it carries.
            cur = await conn.execute(
                "SELECT asset_id FROM assets WHERE tenant_id = %s AND type = 'job' ORDER BY random() LIMIT %s",
                [TENANT, max(10, count // 4)],
                prepare=False,
            )
            jobs = [r["asset_id"] for r in await cur.fetchall()]
        # Warm-up: first use of each statement on the connection, and the OS page cache.
        await timed(db, "warm-up", starts[:50], walk_call("both", 5))
        # The machine may be shared: say how busy it was, next to the figures.
        print(f"load average before measuring: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        rows = []
        directions: tuple[lineage.Direction, ...] = ("downstream", "upstream", "both")
        steps: tuple[Step, ...] = ("downstream", "upstream")
        for direction in directions:
            for depth in (1, 3, 5, 10):
                rows.append(await timed(db, f"{direction} depth {depth}", starts, walk_call(direction, depth)))
        for direction in steps:
            rows.append(await timed(db, f"{direction} depth 5, columns", starts, walk_call(direction, 5, columns=True)))
        few = starts[: max(10, count // 4)]
        for direction in directions:
            rows.append(
                await timed(
                    db,
                    f"{direction} depth {MAX_DEPTH}, limit {MAX_NODE_LIMIT}",
                    few,
                    walk_call(direction, MAX_DEPTH, MAX_NODE_LIMIT),
                )
            )
        rows.append(await timed(db, f"impact depth {MAX_DEPTH}, limit 1000", starts, impact_call(MAX_DEPTH)))
        rows.append(await timed(db, "both depth 3, from jobs", jobs, walk_call("both", 3)))
        rows.append(await timed(db, f"impact depth {MAX_DEPTH}, from jobs", jobs, impact_call(MAX_DEPTH)))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        print_table(rows)
        if compare_cte:
            cte_rows = []
            for step_ in steps:
                for depth in (3, 5, 10):
                    cte_rows.append(await timed(db, f"CTE {step_} depth {depth}", few, cte_call(step_, depth)))
                    cte_rows.append(await timed(db, f"BFS {step_} depth {depth}", few, walk_call(step_, depth)))
            # A CTE's LIMIT applies after the recursion: from a hub it reads everything first.
            async with db.tenant(TENANT) as conn:
                cur = await conn.execute(
                    "SELECT asset_id FROM assets WHERE tenant_id = %s AND qualified_name = ANY(%s)",
                    [TENANT, [f"bench://warehouse/l00/t{h:07d}" for h in range(HUBS)]],
                )
                hubs = [r["asset_id"] for r in await cur.fetchall()]
            cte_rows.append(await timed(db, "CTE downstream depth 3, from hubs", hubs, cte_call("downstream", 3)))
            cte_rows.append(await timed(db, "BFS downstream depth 3, from hubs", hubs, walk_call("downstream", 3)))
            print(f"\nrecursive CTE against the level-by-level walk (same {len(few)} starts, limit 1000):")
            print_table(cte_rows)
    finally:
        await db.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an administrative URL; the benchmark creates its own database next to it",
    )
    parser.add_argument("--assets", type=int, default=int(os.environ.get("LILY_BENCH_ASSETS", 1_000_000)))
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--starts", type=int, default=200, help="random start nodes per query row")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    parser.add_argument("--reuse", metavar="DBNAME", help="measure an existing, kept benchmark database")
    parser.add_argument("--no-cte", action="store_true", help="skip the recursive-CTE comparison")
    args = parser.parse_args(argv)
    if args.assets < MIN_ASSETS:
        # The noise tenants get a tenth each: below this their layers are narrower than the hubs, whose
        # edges then loop onto themselves, and there are fewer distinct back edges than the graph asks for.
        parser.error(f"--assets must be at least {MIN_ASSETS:,} (the graph's shape needs it)")

    name = args.reuse or f"lily_bench_lineage_{secrets.token_hex(4)}"
    url = make_conninfo(args.url, dbname=name)
    if not args.reuse:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        if not args.reuse:
            print(f"database {name}: {args.assets:,} assets in tenant {TENANT!r}, {args.layers} layers")
            t0 = time.perf_counter()
            migrate(url, partitions=4)
            load(url, args.assets, args.layers, args.seed)
            print(f"{'loaded in':<52} {time.perf_counter() - t0:8.1f} s")
        with psycopg.connect(url) as conn:
            for tenant, n in conn.execute(
                "SELECT tenant_id, count(*) FROM lineage_edges GROUP BY 1 ORDER BY 1"
            ).fetchall():
                print(f"  {tenant}: {n:,} edges")
        asyncio.run(measure(url, args.starts, not args.no_cte))
    finally:
        if args.keep or args.reuse:
            print(f"kept database {name}")
        else:
            with psycopg.connect(args.url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
    sys.exit(0)
