"""Lineage requests, planning and rendering: pure, no database."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from lily.domain.errors import Invalid
from lily.domain.lineage import (
    MAX_EDGES_PER_REQUEST,
    AssetRef,
    ColumnSpec,
    EdgeSpec,
    LineageEdge,
    LineageGraph,
    LineageIn,
    LineageNode,
    plan,
    to_dot,
    to_mermaid,
)

A, B, C, JOB = (uuid.UUID(int=i) for i in (1, 2, 3, 4))


def qn(name: str) -> dict[str, str]:
    return {"qualified_name": name}


def error_fields(exc: ValidationError) -> list[tuple[str | int, ...]]:
    return [e["loc"] for e in exc.errors()]


def resolver(table: dict[str, UUID]) -> Any:
    return lambda ref: ref.asset_id if ref.asset_id is not None else table[ref.qualified_name]


def test_asset_ref_takes_exactly_one_identifier() -> None:
    assert AssetRef.model_validate(qn(" db.orders ")).qualified_name == "db.orders"
    for bad in ({}, {"asset_id": str(A), "qualified_name": "x"}, {"qualified_name": "x", "kind": "t"}):
        with pytest.raises(ValidationError):
            AssetRef.model_validate(bad)


def test_request_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        LineageIn.model_validate({"upstreams": [qn("a")], "downstreams": [qn("b")], "edges": []})
    assert error_fields(exc.value) == [("edges",)]


def test_self_loop_is_reported_on_downstreams() -> None:
    with pytest.raises(ValidationError) as exc:
        LineageIn.model_validate({"upstreams": [qn("a"), qn("b")], "downstreams": [qn("b")]})
    assert error_fields(exc.value) == [("downstreams",)]
    assert "own upstream" in str(exc.value)


def test_process_cannot_be_an_endpoint() -> None:
    with pytest.raises(ValidationError) as exc:
        LineageIn.model_validate({"upstreams": [qn("a")], "downstreams": [qn("b")], "process": qn("a")})
    assert error_fields(exc.value) == [("process",)]


def test_too_many_edges_in_one_request() -> None:
    side = int(MAX_EDGES_PER_REQUEST**0.5) + 1
    with pytest.raises(ValidationError, match="edges in one request"):
        LineageIn.model_validate(
            {
                "upstreams": [qn(f"u{i}") for i in range(side)],
                "downstreams": [qn(f"d{i}") for i in range(side)],
            }
        )


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"column": "c", "upstreams": [{"asset": qn("a"), "column": "x"}]}, "asset is required"),
        (
            {"column": "c", "asset": qn("a"), "upstreams": [{"asset": qn("a"), "column": "x"}]},
            "not among the downstreams",
        ),
        (
            {"column": "c", "asset": qn("b"), "upstreams": [{"asset": qn("z"), "column": "x"}]},
            "not among the upstreams",
        ),
        ({"column": "c", "asset": qn("b"), "upstreams": []}, "at least 1"),
    ],
)
def test_column_mappings_must_use_listed_assets(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as exc:
        LineageIn.model_validate(
            {"upstreams": [qn("a")], "downstreams": [qn("b"), qn("c")], "column_mappings": [mapping]}
        )
    assert exc.value.errors()[0]["loc"][0] == "column_mappings"


def test_column_mappings_compare_ids_and_names_once_resolved() -> None:
    # The upstream by id, the mapping by name (and the downstream the other way round): the model cannot
    # tell whether they are the same asset, so it leaves that to plan(), which compares resolved ids.
    body = {
        "upstreams": [{"asset_id": str(A)}],
        "downstreams": [qn("c")],
        "column_mappings": [
            {"column": "t", "asset": {"asset_id": str(C)}, "upstreams": [{"asset": qn("a"), "column": "x"}]}
        ],
    }
    request = LineageIn.model_validate(body)
    assert {*request.refs()} == {
        AssetRef(asset_id=A),
        AssetRef(qualified_name="c"),
        AssetRef(asset_id=C),
        AssetRef(qualified_name="a"),
    }
    assert plan(request, resolver({"a": A, "c": C})).columns == [ColumnSpec(A, C, None, "t", "x", None)]
    with pytest.raises(Invalid, match="not among the upstreams") as exc:
        plan(request, resolver({"a": B, "c": C}))
    assert exc.value.extra["errors"][0]["field"] == "column_mappings"
    with pytest.raises(Invalid, match="not among the downstreams"):
        plan(request, resolver({"a": A, "c": B}))


def test_plan_crosses_upstreams_and_downstreams() -> None:
    request = LineageIn.model_validate(
        {
            "upstreams": [qn("a"), {"asset_id": str(B)}, qn("a")],
            "downstreams": [qn("c")],
            "process": qn("job"),
            "column_mappings": [
                {
                    "column": "total",
                    "upstreams": [{"asset": qn("a"), "column": "x"}, {"asset": {"asset_id": str(B)}, "column": "y"}],
                    "transformation": "x + y",
                }
            ],
        }
    )
    result = plan(request, resolver({"a": A, "c": C, "job": JOB}))
    assert result.edges == [EdgeSpec(A, C, JOB), EdgeSpec(B, C, JOB)]
    assert result.columns == [
        ColumnSpec(A, C, JOB, "total", "x", "x + y"),
        ColumnSpec(B, C, JOB, "total", "y", "x + y"),
    ]
    assert len(request.refs()) == 4


def test_plan_catches_a_self_loop_hidden_behind_a_name() -> None:
    request = LineageIn.model_validate({"upstreams": [qn("a")], "downstreams": [{"asset_id": str(A)}]})
    with pytest.raises(Invalid) as exc:
        plan(request, resolver({"a": A}))
    assert exc.value.extra["errors"][0]["field"] == "downstreams"


def _graph(names: list[str], edges: list[tuple[int, int, str | None]], placeholder: int = -1) -> LineageGraph:
    ids = [uuid.UUID(int=i + 1) for i in range(len(names))]
    return LineageGraph(
        root=ids[0],
        direction="downstream",
        depth=2,
        depth_reached=2,
        node_limit=10,
        truncated=False,
        nodes=[
            LineageNode(asset_id=ids[i], qualified_name=n, type="table", name=n, placeholder=i == placeholder, depth=i)
            for i, n in enumerate(names)
        ],
        edges=[
            LineageEdge(
                edge_id=uuid.uuid4(),
                upstream_id=ids[u],
                downstream_id=ids[d],
                process_id=JOB if p else None,
                process_qualified_name=p,
            )
            for u, d, p in edges
        ],
    )


def test_mermaid_of_a_small_graph_escapes_names() -> None:
    graph = _graph(['pg://db/"orders"', "stage#1 <tmp>", "dash|board"], [(0, 1, "job `x`"), (1, 2, None)], 2)
    assert to_mermaid(graph) == (
        "flowchart LR\n"
        '    n0["pg://db/#34;orders#34;"]\n'
        '    n1["stage#35;1 #60;tmp#62;"]\n'
        '    n2["dash#124;board"]\n'
        '    n0 -->|"job #96;x#96;"| n1\n'
        "    n1 --> n2\n"
        "    classDef placeholder stroke-dasharray: 5 5\n"
        "    class n2 placeholder\n"
    )


def test_dot_of_a_small_graph_escapes_names() -> None:
    graph = _graph(['pg://db/"orders"', "C:\\stage\\N", "dash\nboard"], [(0, 1, "job"), (1, 2, None)], 2)
    assert to_dot(graph) == (
        "digraph lineage {\n"
        "    rankdir=LR;\n"
        "    node [shape=box];\n"
        '    n0 [label="pg://db/\\"orders\\""];\n'
        '    n1 [label="C:\\\\stage\\\\N"];\n'
        '    n2 [label="dash board", style=dashed];\n'
        '    n0 -> n1 [label="job"];\n'
        "    n1 -> n2;\n"
        "}\n"
    )
