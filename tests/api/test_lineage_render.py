"""The graph as Mermaid and DOT text, and impact analysis: distances and one shortest path each."""

from __future__ import annotations

import re
import shutil
import subprocess
from itertools import pairwise
from typing import Any

import httpx

from lily.domain.lineage import MAX_DEPTH

from .helpers import assert_problem, create, fields_of

ODD_UP, ODD_DOWN, ODD_JOB, ODD_SIDE = 'a"b', "<x>", "job|1 & #2", "c\\d"


async def link(client: httpx.AsyncClient, tenant: Any, ups: list[str], downs: list[str], **extra: Any) -> None:
    r = await client.post(
        "/metadata/lineage",
        headers=tenant.headers("editor"),
        json={
            "upstreams": [{"qualified_name": u} for u in ups],
            "downstreams": [{"qualified_name": d} for d in downs],
            **extra,
        },
    )
    assert r.status_code == 201, r.text


async def odd_graph(client: httpx.AsyncClient, tenant: Any) -> str:
    """``c\\d`` → ``a"b`` (a real asset) → ``<x>``, the last edge through the job ``job|1 & #2``."""
    root = await create(client, tenant.headers("editor"), ODD_UP)
    await link(client, tenant, [ODD_UP], [ODD_DOWN], process={"qualified_name": ODD_JOB})
    await link(client, tenant, [ODD_SIDE], [ODD_UP])
    return str(root["asset_id"])


async def rendered(client: httpx.AsyncClient, tenant: Any, root: str, fmt: str, **params: Any) -> httpx.Response:
    r = await client.get(
        f"/metadata/lineage/{root}", params={"format": fmt, "depth": 2, **params}, headers=tenant.headers("viewer")
    )
    assert r.status_code == 200, r.text
    return r


MERMAID_NODE = re.compile(r'^    (n\d+)\["([^"]*)"\]$')
MERMAID_EDGE = re.compile(r'^    (n\d+) -->(?:\|"([^"]*)"\|)? (n\d+)$')


async def test_mermaid(client, tenant):
    root = await odd_graph(client, tenant)
    r = await rendered(client, tenant, root, "mermaid")
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes = {m[1]: m[2] for m in map(MERMAID_NODE.match, lines) if m}
    # Quotes and angle brackets are entity codes inside the quoted label; nothing else is rewritten.
    assert sorted(nodes.values()) == sorted(["a#34;b", "#60;x#62;", "c\\d"])
    ids = {label: node for node, label in nodes.items()}
    assert len(ids) == 3
    drawn = {(m[1], m[2], m[3]) for m in map(MERMAID_EDGE.match, lines) if m}
    assert drawn == {(ids["a#34;b"], "job#124;1 #38; #35;2", ids["#60;x#62;"]), (ids["c\\d"], None, ids["a#34;b"])}
    # Placeholders are drawn dashed; the real asset is not.
    assert "    classDef placeholder stroke-dasharray: 5 5" in lines
    (klass,) = [line for line in lines if line.startswith("    class ")]
    assert set(klass.removeprefix("    class ").removesuffix(" placeholder").split(",")) == {
        ids["#60;x#62;"],
        ids["c\\d"],
    }
    # Every line is one of those statements: nothing unescaped leaks into the chart.
    assert len(lines) == 1 + 3 + 2 + 2

    # The same graph as JSON: the text is a rendering of it, not of something else.
    r = await client.get(f"/metadata/lineage/{root}", params={"depth": 2}, headers=tenant.headers("viewer"))
    assert len(r.json()["nodes"]) == 3 and len(r.json()["edges"]) == 2


DOT_NODE = re.compile(r'^    (n\d+) \[label="((?:[^"\\]|\\.)*)"(, style=dashed)?\];$')
DOT_EDGE = re.compile(r'^    (n\d+) -> (n\d+)(?: \[label="((?:[^"\\]|\\.)*)"\])?;$')


async def test_dot(client, tenant, tmp_path):
    root = await odd_graph(client, tenant)
    r = await rendered(client, tenant, root, "dot")
    assert r.headers["content-type"].startswith("text/vnd.graphviz")
    lines = r.text.splitlines()
    assert lines[0] == "digraph lineage {" and lines[-1] == "}"
    nodes = {m[1]: (m[2], bool(m[3])) for m in map(DOT_NODE.match, lines) if m}
    # DOT escString: the quote and the backslash are escaped; angle brackets are plain text in a quoted label.
    assert sorted(nodes.values()) == sorted([('a\\"b', False), ("<x>", True), ("c\\\\d", True)])
    ids = {label: node for node, (label, _) in nodes.items()}
    drawn = {(m[1], m[2], m[3]) for m in map(DOT_EDGE.match, lines) if m}
    assert drawn == {(ids['a\\"b'], ids["<x>"], ODD_JOB), (ids["c\\\\d"], ids['a\\"b'], None)}
    assert len(lines) == 3 + 3 + 2 + 1  # header, rankdir, node defaults; nodes; edges; closing brace

    if shutil.which("dot"):  # when Graphviz is installed, it must accept the text as it is
        out = subprocess.run(["dot", "-Tplain"], input=r.text, capture_output=True, text=True, check=True)
        assert out.stdout.count("\nnode ") == 3


async def test_formats_follow_the_query(client, tenant):
    root = await odd_graph(client, tenant)
    # Direction, depth and the node limit shape the text exactly as they shape the JSON.
    r = await rendered(client, tenant, root, "mermaid", depth=0)
    assert r.text == 'flowchart LR\n    n0["a#34;b"]\n'
    r = await rendered(client, tenant, root, "dot", direction="downstream")
    assert "c\\\\d" not in r.text and r.text.count("[label=") == 3  # two nodes, one job
    r = await rendered(client, tenant, root, "mermaid", limit=2)
    assert r.text.count("-->") == 1
    # The text has no room for the answer's bounds; headers state them, in every format.
    assert (r.headers["Lily-Lineage-Depth"], r.headers["Lily-Lineage-Truncated"]) == ("2", "true")
    for fmt in ("dot", "json"):
        r = await rendered(client, tenant, root, fmt, depth=1000)
        assert (r.headers["Lily-Lineage-Depth"], r.headers["Lily-Lineage-Truncated"]) == (str(MAX_DEPTH), "false")
    r = await client.get(f"/metadata/lineage/{root}", params={"format": "png"}, headers=tenant.headers("viewer"))
    assert fields_of(assert_problem(r, 422, "validation")) == {"format"}


async def impact_of(client: httpx.AsyncClient, tenant: Any, root: str, **params: Any) -> dict[str, Any]:
    r = await client.get(f"/metadata/lineage/{root}/impact", params=params, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_impact_distances_and_paths(client, tenant):
    # s → a → c, s → b → c (a diamond); c → d; a longer way to d: s → x → y → z → d; and up → s upstream.
    edges = [
        ("s", "a"),
        ("s", "b"),
        ("a", "c"),
        ("b", "c"),
        ("c", "d"),
        ("s", "x"),
        ("x", "y"),
        ("y", "z"),
        ("z", "d"),
        ("d", "e"),
        ("up", "s"),
    ]
    for up, down in edges:
        await link(client, tenant, [up], [down])
    s = await create(client, tenant.headers("editor"), "s")

    report = await impact_of(client, tenant, s["asset_id"])
    assert (report["root"], report["max_depth"], report["truncated"]) == (s["asset_id"], MAX_DEPTH, False)
    got = {a["qualified_name"]: a for a in report["assets"]}
    assert {n: a["distance"] for n, a in got.items()} == {
        "a": 1,
        "b": 1,
        "x": 1,
        "c": 2,
        "y": 2,
        "d": 3,
        "z": 3,
        "e": 4,
    }
    assert [a["distance"] for a in report["assets"]] == sorted(a["distance"] for a in report["assets"])
    assert "up" not in got and "s" not in got
    for name, a in got.items():
        path = [step["qualified_name"] for step in a["path"]]
        assert path[0] == "s" and path[-1] == name and len(path) == a["distance"] + 1, (name, path)
        assert all(pair in edges for pair in pairwise(path)), path  # every step is an edge
        assert a["path"][-1]["asset_id"] == a["asset_id"] and a["path"][0]["asset_id"] == s["asset_id"]
        assert a["placeholder"] is True and a["type"] == "unknown" and a["deleted"] is False
    # One shortest path each: through either side of the diamond, never the long way round.
    assert [p["qualified_name"] for p in got["c"]["path"]] in (["s", "a", "c"], ["s", "b", "c"])
    assert [p["qualified_name"] for p in got["d"]["path"]] in (["s", "a", "c", "d"], ["s", "b", "c", "d"])
    assert [p["qualified_name"] for p in got["e"]["path"]][-2:] == ["d", "e"]

    report = await impact_of(client, tenant, s["asset_id"], max_depth=2)
    assert report["max_depth"] == 2
    assert {a["qualified_name"] for a in report["assets"]} == {"a", "b", "x", "c", "y"}
    report = await impact_of(client, tenant, s["asset_id"], max_depth=10_000)
    assert report["max_depth"] == MAX_DEPTH and len(report["assets"]) == 8  # clamped, and said so

    # A leaf has no impact; an unknown asset is a 404.
    e = next(a for a in got.values() if a["qualified_name"] == "e")
    assert (await impact_of(client, tenant, e["asset_id"]))["assets"] == []
    for bad in ({"max_depth": 0}, {"limit": 0}):
        r = await client.get(f"/metadata/lineage/{s['asset_id']}/impact", params=bad, headers=tenant.headers("viewer"))
        assert fields_of(assert_problem(r, 422, "validation")) == set(bad)


async def test_unknown_asset_is_404_in_every_format(client, tenant):
    unknown = "6f1c1f0e-6a44-4b8a-9a39-2a7f1f7d0c55"
    for fmt in ("json", "mermaid", "dot"):
        r = await client.get(f"/metadata/lineage/{unknown}", params={"format": fmt}, headers=tenant.headers("viewer"))
        assert unknown in assert_problem(r, 404, "not-found")["detail"]
