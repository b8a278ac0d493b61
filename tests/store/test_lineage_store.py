"""Lineage SQL against a real PostgreSQL: writes, walks in both directions, limits, impact, isolation."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from uuid import UUID

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg.conninfo import make_conninfo

from lily.domain.errors import Invalid, NotFound
from lily.domain.lineage import MAX_DEPTH, ColumnSpec, EdgeSpec, LineageGraph, to_dot, to_mermaid
from lily.store import lineage
from lily.store.db import Database, owner_connection
from lily.store.migrate import migrate

# The lead replaces this fixture with the shared conftest one; until then each module makes its own.
ADMIN_URL = os.environ.get("LILY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def aid(name: str) -> UUID:
    """Asset ids from names, so t2 can reuse t1's ids exactly (ids are unique per tenant only)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, name)


# t1's graph: a job feeding a stage, a chain, a cycle, a diamond and a hub.
T1_EDGES: list[tuple[str, str, str | None]] = [
    ("src_a", "stage", "etl_job"),
    ("src_b", "stage", "etl_job"),
    ("stage", "mart", None),
    ("stage", "report", None),
    ("mart", "dash", None),
    ("c0", "c1", None),
    ("c1", "c2", None),
    ("c2", "c3", None),
    ("c3", "c4", None),
    ("c4", "c5", None),
    ("x", "y", None),
    ("y", "z", None),
    ("z", "x", None),
    ("d0", "d1", None),
    ("d0", "d2", None),
    ("d1", "d3", None),
    ("d2", "d3", None),
    ("d3", "d4", None),
    *((("hub", f"h{i}", None)) for i in range(10)),
]
T1_ASSETS = sorted({n for u, d, p in T1_EDGES for n in (u, d, p) if n} | {"lonely", "t1_only"})
# t2 reuses some of t1's asset ids under other names, and adds edges t1 does not have.
T2_ASSETS = ["stage", "mart", "src_a", "t2_only"]
T2_EDGES = [("stage", "t2_only", None), ("src_a", "stage", None), ("stage", "mart", None)]


def spec(up: str, down: str, process: str | None = None) -> EdgeSpec:
    return EdgeSpec(aid(up), aid(down), aid(process) if process else None)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    name = f"lineage_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = make_conninfo(ADMIN_URL, dbname=name)
        migrate(url, partitions=4)
        _seed(url)
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _seed(url: str) -> None:
    """Tenants and assets, written as the owner (a superuser, so RLS does not apply)."""
    now = datetime.now(UTC)
    rows = [("t1", aid(n), f"t1.{n}", "job" if n.endswith("job") else "table", n) for n in T1_ASSETS]
    rows += [("t2", aid(n), f"secret.{n}", "table", f"secret_{n}") for n in T2_ASSETS]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('t1', 'one'), ('t2', 'two')")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, version,"
                " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, 1, %s, %s)",
                [(*r, now, now) for r in rows],
            )


@pytest_asyncio.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, min_size=1, max_size=4)
    await database.open()
    async with database.tenant("t1") as conn:
        await lineage.upsert_edges(conn, "t1", [spec(*e) for e in T1_EDGES])
        await lineage.upsert_column_lineage(
            conn,
            "t1",
            [
                ColumnSpec(aid("src_a"), aid("stage"), aid("etl_job"), "total", "amount", "sum(amount)"),
                ColumnSpec(aid("src_b"), aid("stage"), aid("etl_job"), "total", "fee", "sum(fee)"),
            ],
        )
    async with database.tenant("t2") as conn:
        await lineage.upsert_edges(conn, "t2", [spec(*e) for e in T2_EDGES])
    yield database
    await database.close()


async def walk(db: Database, start: str, direction: lineage.Direction, depth: int, **kw: object) -> LineageGraph:
    async with db.tenant("t1") as conn:
        return await lineage.traverse(conn, "t1", aid(start), direction, depth, **kw)  # type: ignore[arg-type]


def names(graph: LineageGraph) -> set[str]:
    return {n.name for n in graph.nodes}


def pairs(graph: LineageGraph) -> set[tuple[str, str]]:
    by_id = {n.asset_id: n.name for n in graph.nodes}
    return {(by_id[e.upstream_id], by_id[e.downstream_id]) for e in graph.edges}


async def test_upsert_reports_new_and_existing_edges(db: Database) -> None:
    async with db.tenant("t1") as conn:
        first = await lineage.upsert_edges(conn, "t1", [spec("lonely", "t1_only"), spec("lonely", "c0")])
        again = await lineage.upsert_edges(conn, "t1", [spec("lonely", "t1_only"), spec("lonely", "c5")])
        await lineage.delete_edges(conn, "t1", aid("lonely"), "both")
    assert all(e.created for e in first)
    created = {e.downstream_id: e.created for e in again}
    assert created == {aid("t1_only"): False, aid("c5"): True}
    assert {e.edge_id for e in first} & {e.edge_id for e in again} == {
        e.edge_id for e in first if e.downstream_id == aid("t1_only")
    }


async def test_downstream_and_upstream(db: Database) -> None:
    down = await walk(db, "stage", "downstream", 1)
    up = await walk(db, "stage", "upstream", 1)
    assert names(down) == {"stage", "mart", "report"}
    assert pairs(up) == {("src_a", "stage"), ("src_b", "stage")}
    assert {e.process_qualified_name for e in up.edges} == {"t1.etl_job"}
    assert "etl_job" not in names(up)  # a process labels its edges; it is not a node
    both = await walk(db, "stage", "both", 2)
    assert names(both) == {"stage", "mart", "report", "dash", "src_a", "src_b"}
    assert {n.name: n.depth for n in both.nodes}["dash"] == 2
    assert both.nodes[0].name == "stage" and not both.truncated


async def test_depth_is_limited_and_capped(db: Database) -> None:
    graph = await walk(db, "c0", "downstream", 2)
    assert names(graph) == {"c0", "c1", "c2"} and graph.depth_reached == 2
    assert names(await walk(db, "c5", "upstream", 3)) == {"c5", "c4", "c3", "c2"}
    capped = await walk(db, "c0", "downstream", 10_000)
    assert capped.depth == MAX_DEPTH and capped.depth_reached == 5


async def test_cycles_terminate(db: Database) -> None:
    for direction in ("downstream", "upstream", "both"):
        graph = await walk(db, "x", direction, MAX_DEPTH)  # type: ignore[arg-type]
        assert names(graph) == {"x", "y", "z"}
        assert pairs(graph) == {("x", "y"), ("y", "z"), ("z", "x")}
        assert graph.depth_reached == (1 if direction == "both" else 2)


async def test_diamond_reaches_each_node_once(db: Database) -> None:
    graph = await walk(db, "d0", "downstream", 5)
    assert [n.name for n in graph.nodes] == ["d0", "d1", "d2", "d3", "d4"]
    assert [n.depth for n in graph.nodes] == [0, 1, 1, 2, 3]
    assert len(graph.edges) == 5


async def test_node_limit_sets_truncated(db: Database) -> None:
    cut = await walk(db, "hub", "downstream", 1, node_limit=5)
    assert cut.truncated and len(cut.nodes) == 5
    assert len(cut.edges) == 4  # only edges between nodes that made it in
    whole = await walk(db, "hub", "downstream", 1, node_limit=11)
    assert not whole.truncated and len(whole.nodes) == 11
    alone = await walk(db, "hub", "both", 3, node_limit=1)
    assert alone.truncated and names(alone) == {"hub"} and alone.edges == []


async def test_column_lineage(db: Database) -> None:
    plain = await walk(db, "stage", "upstream", 1)
    assert all(e.columns is None for e in plain.edges)
    graph = await walk(db, "stage", "upstream", 1, with_columns=True)
    by_up = {e.upstream_id: e.columns for e in graph.edges}
    assert by_up[aid("src_a")] is not None and by_up[aid("src_b")] is not None
    assert [(c.downstream_column, c.upstream_column, c.transformation) for c in by_up[aid("src_a")]] == [
        ("total", "amount", "sum(amount)")
    ]
    assert [c.upstream_column for c in by_up[aid("src_b")]] == ["fee"]


async def test_column_mapping_replaces_the_columns_inputs_on_that_edge(db: Database) -> None:
    async with db.tenant("t1") as conn:
        await lineage.upsert_edges(conn, "t1", [spec("lonely", "t1_only")])
        col = ColumnSpec(aid("lonely"), aid("t1_only"), None, "out", "a", None)
        first = await lineage.upsert_column_lineage(conn, "t1", [col])
        same = await lineage.upsert_column_lineage(conn, "t1", [col])
        moved = await lineage.upsert_column_lineage(
            conn,
            "t1",
            [
                ColumnSpec(aid("lonely"), aid("t1_only"), None, "out", "b", "b"),
                ColumnSpec(aid("lonely"), aid("t1_only"), None, "out", "b", "b + 1"),  # the last one given wins
            ],
        )
        graph = await lineage.traverse(conn, "t1", aid("t1_only"), "upstream", 1, with_columns=True)
        await lineage.delete_edges(conn, "t1", aid("lonely"), "both")
    with pytest.raises(NotFound):
        async with db.tenant("t1") as conn:
            await lineage.upsert_column_lineage(
                conn, "t1", [ColumnSpec(aid("t1_only"), aid("lonely"), None, "out", "a", None)]
            )
    assert (first.written, same.written, moved.written, moved.removed) == (1, 0, 1, 1)
    assert [(c.upstream_column, c.transformation) for c in graph.edges[0].columns or []] == [("b", "b + 1")]


async def test_impact_lists_distance_and_path(db: Database) -> None:
    async with db.tenant("t1") as conn:
        report = await lineage.impact(conn, "t1", aid("src_a"))
        diamond = await lineage.impact(conn, "t1", aid("d0"))
        short = await lineage.impact(conn, "t1", aid("src_a"), max_depth=1)
    found = {a.name: (a.distance, [p.qualified_name for p in a.path]) for a in report.assets}
    assert found == {
        "stage": (1, ["t1.src_a", "t1.stage"]),
        "mart": (2, ["t1.src_a", "t1.stage", "t1.mart"]),
        "report": (2, ["t1.src_a", "t1.stage", "t1.report"]),
        "dash": (3, ["t1.src_a", "t1.stage", "t1.mart", "t1.dash"]),
    }
    d4 = next(a for a in diamond.assets if a.name == "d4")
    assert d4.distance == 3 and len(d4.path) == 4 and d4.path[0].asset_id == aid("d0")
    assert [a.name for a in short.assets] == ["stage"]


async def test_a_walk_from_a_job_goes_through_the_edges_it_carries(db: Database) -> None:
    # src_a, src_b → stage through etl_job: from the job, its inputs are upstream and stage downstream.
    both = await walk(db, "etl_job", "both", 2)
    assert {n.name: n.depth for n in both.nodes} == {
        "etl_job": 0,
        "src_a": 1,
        "src_b": 1,
        "stage": 1,
        "mart": 2,
        "report": 2,
    }
    assert pairs(both) == {("src_a", "stage"), ("src_b", "stage"), ("stage", "mart"), ("stage", "report")}
    down = await walk(db, "etl_job", "downstream", 1)
    assert names(down) == {"etl_job", "stage"}
    # The carried edges stand for etl_job → stage; their inputs are not downstream, so not nodes.
    assert {(e.upstream_id, e.downstream_id, e.process_id) for e in down.edges} == {
        (aid("src_a"), aid("stage"), aid("etl_job")),
        (aid("src_b"), aid("stage"), aid("etl_job")),
    }
    assert names(await walk(db, "etl_job", "both", 0)) == {"etl_job"}
    cut = await walk(db, "etl_job", "both", 2, node_limit=3)
    assert cut.truncated and len(cut.nodes) == 3
    async with db.tenant("t1") as conn:
        report = await lineage.impact(conn, "t1", aid("etl_job"))
        reached = await lineage.downstream_without_source(conn, "t1", [aid("etl_job")], depth=2)
    found = {a.name: (a.distance, [p.qualified_name for p in a.path]) for a in report.assets}
    assert found == {
        "stage": (1, ["t1.etl_job", "t1.stage"]),
        "mart": (2, ["t1.etl_job", "t1.stage", "t1.mart"]),
        "report": (2, ["t1.etl_job", "t1.stage", "t1.report"]),
        "dash": (3, ["t1.etl_job", "t1.stage", "t1.mart", "t1.dash"]),
    }
    assert reached[0] == aid("stage") and set(reached) == {aid("stage"), aid("mart"), aid("report")}


async def test_downstream_without_source_dedupes(db: Database) -> None:
    async with db.tenant("t1") as conn:
        diamond = await lineage.downstream_without_source(conn, "t1", [aid("d1"), aid("d2")], depth=5)
        cycle = await lineage.downstream_without_source(conn, "t1", [aid("x")], depth=10)
        near = await lineage.downstream_without_source(conn, "t1", [aid("c0")], depth=2)
        # The pipeline hands over ids as they sit in event payloads: text, possibly upper case.
        as_text = await lineage.downstream_without_source(conn, "t1", [str(aid("c0")).upper()], depth=1)
    assert diamond == [aid("d3"), aid("d4")]
    assert as_text == [aid("c1")]
    assert set(cycle) == {aid("y"), aid("z")}
    assert near == [aid("c1"), aid("c2")]


async def test_delete_edges_by_direction(db: Database) -> None:
    async with db.tenant("t1") as conn:
        await lineage.upsert_edges(conn, "t1", [spec("c1", "lonely"), spec("lonely", "t1_only")])
        await lineage.upsert_column_lineage(
            conn, "t1", [ColumnSpec(aid("lonely"), aid("t1_only"), None, "o", "i", None)]
        )
        ups = await lineage.delete_edges(conn, "t1", aid("lonely"), "upstream")
        rest = await lineage.traverse(conn, "t1", aid("lonely"), "both", 1)
        downs = await lineage.delete_edges(conn, "t1", aid("lonely"), "downstream")
        left = await conn.execute("SELECT count(*) AS n FROM column_lineage WHERE tenant_id = 't1'")
        none = await lineage.delete_edges(conn, "t1", aid("lonely"), "both")
    assert [(e.upstream_id, e.downstream_id) for e in ups] == [(aid("c1"), aid("lonely"))]
    assert names(rest) == {"lonely", "t1_only"}
    assert [(e.upstream_id, e.downstream_id) for e in downs] == [(aid("lonely"), aid("t1_only"))]
    assert (await left.fetchone() or {})["n"] == 2  # the mapping went with its edge; the fixture's stay
    assert none == []


async def test_another_tenants_lineage_never_shows(db: Database, database_url: str) -> None:
    # t2 has the same asset ids as t1 for stage/mart/src_a, other names, and an extra edge.
    graph = await walk(db, "stage", "both", MAX_DEPTH)
    assert all(n.qualified_name.startswith("t1.") for n in graph.nodes)
    assert aid("t2_only") not in {n.asset_id for n in graph.nodes}
    async with db.tenant("t2") as conn:
        theirs = await lineage.traverse(conn, "t2", aid("stage"), "both", MAX_DEPTH)
        with pytest.raises(NotFound):
            await lineage.traverse(conn, "t2", aid("dash"), "both", 1)
    assert {n.qualified_name for n in theirs.nodes} == {"secret.stage", "secret.mart", "secret.src_a", "secret.t2_only"}
    # The explicit tenant filter holds on its own, even on a connection that bypasses RLS.
    owner = await owner_connection(database_url)
    async with owner:
        bypass = await lineage.traverse(owner, "t1", aid("stage"), "both", MAX_DEPTH)
        impact = await lineage.impact(owner, "t1", aid("stage"))
    assert {n.qualified_name for n in bypass.nodes} == {n.qualified_name for n in graph.nodes}
    assert all(a.qualified_name.startswith("t1.") for a in impact.assets)


async def test_edges_cannot_cross_tenants(db: Database) -> None:
    with pytest.raises(NotFound):
        async with db.tenant("t1") as conn:
            await lineage.upsert_edges(conn, "t1", [spec("lonely", "t2_only")])


async def test_self_loops_are_rejected(db: Database, database_url: str) -> None:
    with pytest.raises(Invalid):
        async with db.tenant("t1") as conn:
            await lineage.upsert_edges(conn, "t1", [spec("lonely", "lonely")])
    with psycopg.connect(database_url, autocommit=True) as owner, pytest.raises(psycopg.errors.CheckViolation):
        owner.execute(
            "INSERT INTO lineage_edges (tenant_id, upstream_id, downstream_id) VALUES ('t1', %s, %s)",
            [aid("lonely"), aid("lonely")],
        )


async def test_rendering_a_traversed_graph(db: Database) -> None:
    graph = await walk(db, "c0", "downstream", 2)
    assert to_mermaid(graph) == (
        'flowchart LR\n    n0["t1.c0"]\n    n1["t1.c1"]\n    n2["t1.c2"]\n    n0 --> n1\n    n1 --> n2\n'
    )
    assert to_dot(graph) == (
        "digraph lineage {\n"
        "    rankdir=LR;\n"
        "    node [shape=box];\n"
        '    n0 [label="t1.c0"];\n'
        '    n1 [label="t1.c1"];\n'
        '    n2 [label="t1.c2"];\n'
        "    n0 -> n1;\n"
        "    n1 -> n2;\n"
        "}\n"
    )
