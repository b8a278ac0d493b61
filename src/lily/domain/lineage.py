"""Lineage: what a client may send, the graph Lily answers with, and its Mermaid/DOT renderings.

A request names assets by ``asset_id`` or ``qualified_name``; the apply stage resolves the names
(creating placeholders for unknown ones) and calls :func:`plan` to turn the request into the edge and
column rows the store writes. Checks that need only the request run in the models (pydantic errors
name the field); the self-loop and column-mapping checks run again after resolution, because an id
and a name may be the same asset.

A process (job) labels the edges it carries. It is a node of its own when a graph or an impact
analysis starts from it: its inputs are then upstream of it and its outputs downstream, the path
``input → job → output`` that OpenLineage and Marquez draw.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Annotated, Literal, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lily.domain.assets import QualifiedName
from lily.domain.errors import Invalid
from lily.domain.storable import NO_NUL, check_column_bytes, check_text

Direction = Literal["upstream", "downstream", "both"]
Step = Literal["upstream", "downstream"]

# Deeper asks are clamped, not refused; the answer states the depth it used. Past 20 hops a graph is
# too large to read, and the node limit would cut it first anyway.
MAX_DEPTH = 20
DEFAULT_DEPTH = 3
DEFAULT_NODE_LIMIT = 1000
# 5000, not 10k: on the 1M-asset benchmark a 10k-node answer took up to 1.1 s at p99 on a busy
# 2-vCPU box, over the 1 s budget for any capped traversal; nobody reads a 5000-node graph anyway.
MAX_NODE_LIMIT = 5000
# Edges fetched per traversal, as a multiple of the node limit: a hub with 100k children must not
# turn a 1000-node answer into a 100k-row read.
EDGE_LIMIT_FACTOR = 4
# One request writes at most upstreams * downstreams edges; keep that product sane.
MAX_REFS = 1000
MAX_EDGES_PER_REQUEST = 10_000

ColumnName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=1024, pattern=NO_NUL),
    AfterValidator(check_column_bytes),  # two of them make column_lineage's primary key
]


def clamp_depth(depth: int) -> int:
    return max(0, min(depth, MAX_DEPTH))


def clamp_node_limit(limit: int) -> int:
    return max(1, min(limit, MAX_NODE_LIMIT))


# ---------------------------------------------------------------- requests: POST /metadata/lineage


class AssetRef(BaseModel):
    """An asset named by exactly one of its id or its qualified name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    asset_id: UUID | None = None
    qualified_name: QualifiedName | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.asset_id is None) == (self.qualified_name is None):
            raise ValueError("give exactly one of asset_id or qualified_name")
        return self

    def __str__(self) -> str:
        return str(self.asset_id) if self.asset_id is not None else f"qualified_name={self.qualified_name}"


class UpstreamColumn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    asset: AssetRef
    column: ColumnName


class ColumnMapping(BaseModel):
    """One downstream column and the upstream columns it is computed from."""

    model_config = ConfigDict(extra="forbid")

    column: ColumnName
    # May be left out when the request has exactly one downstream asset.
    asset: AssetRef | None = None
    upstreams: list[UpstreamColumn] = Field(min_length=1, max_length=MAX_REFS)
    transformation: (
        Annotated[str, StringConstraints(max_length=65536, pattern=NO_NUL), AfterValidator(check_text)] | None
    ) = None


class LineageIn(BaseModel):
    """``POST /metadata/lineage``: every upstream feeds every downstream, optionally through a process."""

    model_config = ConfigDict(extra="forbid")

    upstreams: list[AssetRef] = Field(min_length=1, max_length=MAX_REFS)
    downstreams: list[AssetRef] = Field(min_length=1, max_length=MAX_REFS)
    process: AssetRef | None = None
    column_mappings: list[ColumnMapping] = Field(default_factory=list, max_length=MAX_EDGES_PER_REQUEST)

    @field_validator("upstreams", "downstreams")
    @classmethod
    def _dedupe(cls, refs: list[AssetRef]) -> list[AssetRef]:
        return list(dict.fromkeys(refs))

    # Declared after upstreams, so a failure here is reported on ``downstreams``.
    @field_validator("downstreams")
    @classmethod
    def _no_self_loop(cls, downstreams: list[AssetRef], info: ValidationInfo) -> list[AssetRef]:
        loops = set(downstreams) & set(info.data.get("upstreams", ()))
        if loops:
            raise ValueError(f"an asset cannot be its own upstream: {', '.join(sorted(map(str, loops)))}")
        product = len(downstreams) * len(info.data.get("upstreams", ()))
        if product > MAX_EDGES_PER_REQUEST:
            raise ValueError(f"{product} edges in one request; at most {MAX_EDGES_PER_REQUEST}")
        return downstreams

    @field_validator("process")
    @classmethod
    def _process_not_endpoint(cls, process: AssetRef | None, info: ValidationInfo) -> AssetRef | None:
        ends = {*info.data.get("upstreams", ()), *info.data.get("downstreams", ())}
        if process is not None and process in ends:
            raise ValueError("the process cannot also be an upstream or downstream asset")
        return process

    @field_validator("column_mappings")
    @classmethod
    def _mappings_use_listed_assets(cls, mappings: list[ColumnMapping], info: ValidationInfo) -> list[ColumnMapping]:
        if "upstreams" not in info.data or "downstreams" not in info.data:
            return mappings  # already reported on those fields
        ups, downs = info.data["upstreams"], info.data["downstreams"]
        for i, mapping in enumerate(mappings):
            if mapping.asset is None and len(downs) != 1:
                raise ValueError(f"[{i}].asset is required when there is more than one downstream")
            if mapping.asset is not None and not _may_be_among(mapping.asset, downs):
                raise ValueError(f"[{i}].asset {mapping.asset} is not among the downstreams")
            for j, up in enumerate(mapping.upstreams):
                if not _may_be_among(up.asset, ups):
                    raise ValueError(f"[{i}].upstreams[{j}].asset {up.asset} is not among the upstreams")
        return mappings

    def refs(self) -> list[AssetRef]:
        """Every asset the request names, each once: what the apply stage must resolve. Column
        mappings' references are included, as they may spell an asset differently (see
        :func:`check_mappings`)."""
        named = [*self.upstreams, *self.downstreams, *([self.process] if self.process else [])]
        named += [m.asset for m in self.column_mappings if m.asset is not None]
        named += [u.asset for m in self.column_mappings for u in m.upstreams]
        return list(dict.fromkeys(named))


def _may_be_among(ref: AssetRef, refs: list[AssetRef]) -> bool:
    """Whether ``ref`` is, or may turn out to be, one of ``refs``: a name may be the asset another
    reference gives by id (and the reverse), which only resolution tells (:func:`check_mappings`)."""
    by_id = ref.asset_id is not None
    return ref in refs or any((r.asset_id is not None) != by_id for r in refs)


def check_mappings(request: LineageIn, resolve: Callable[[AssetRef], Hashable]) -> None:
    """Refuse a column mapping whose assets are not among the request's, compared once ``resolve``
    has mapped every reference to one key per asset (its id, or its qualified name): the model can
    only compare references spelled alike. Raises :class:`Invalid` on ``column_mappings``."""
    ups = {resolve(r) for r in request.upstreams}
    downs = {resolve(r) for r in request.downstreams}
    for i, mapping in enumerate(request.column_mappings):
        if mapping.asset is not None and resolve(mapping.asset) not in downs:
            raise Invalid(f"[{i}].asset {mapping.asset} is not among the downstreams", field="column_mappings")
        for j, up in enumerate(mapping.upstreams):
            if resolve(up.asset) not in ups:
                raise Invalid(
                    f"[{i}].upstreams[{j}].asset {up.asset} is not among the upstreams", field="column_mappings"
                )


# ---------------------------------------------------------------- what the store writes


@dataclass(frozen=True, slots=True)
class EdgeSpec:
    upstream_id: UUID
    downstream_id: UUID
    process_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """A column mapping on the edge ``(upstream_id, downstream_id, process_id)``."""

    upstream_id: UUID
    downstream_id: UUID
    process_id: UUID | None
    downstream_column: str
    upstream_column: str
    transformation: str | None


@dataclass(frozen=True, slots=True)
class LineagePlan:
    edges: list[EdgeSpec]
    columns: list[ColumnSpec]


def plan(request: LineageIn, resolve: Callable[[AssetRef], UUID]) -> LineagePlan:
    """The rows ``request`` stands for, once ``resolve`` has mapped each reference to an asset id.

    Raises :class:`Invalid` for a self-loop that only shows after resolution (an id and a name of
    the same asset on both sides), and for a column mapping naming an asset not among the request's.
    """
    ups = [resolve(r) for r in request.upstreams]
    downs = [resolve(r) for r in request.downstreams]
    process = resolve(request.process) if request.process else None
    loops = set(ups) & set(downs)
    if loops:
        loop = sorted(map(str, loops))[0]
        raise Invalid(f"an asset cannot be its own upstream: {loop}", field="downstreams")
    if process is not None and process in {*ups, *downs}:
        raise Invalid("the process cannot also be an upstream or downstream asset", field="process")
    check_mappings(request, resolve)
    edges = list(dict.fromkeys(EdgeSpec(u, d, process) for u in ups for d in downs))
    columns = [
        ColumnSpec(
            resolve(up.asset),
            resolve(m.asset) if m.asset else downs[0],
            process,
            m.column,
            up.column,
            m.transformation,
        )
        for m in request.column_mappings
        for up in m.upstreams
    ]
    return LineagePlan(edges, list(dict.fromkeys(columns)))


# ---------------------------------------------------------------- answers: the graph and impact
# Nodes and edges are plain dataclasses, not models: a capped traversal builds tens of thousands of
# them from rows the store already typed, and validating each again tripled the time of a 10k-node
# answer. Pydantic takes dataclass instances in the containing model as they are and serialises them.
# Not frozen either: a frozen dataclass's __init__ goes through object.__setattr__, 7x slower.


@dataclass(slots=True)
class LineageNode:
    asset_id: UUID
    qualified_name: str
    type: str
    name: str
    placeholder: bool
    depth: int  # hops from the asset the traversal started at
    deleted: bool = False


@dataclass(slots=True)
class RedactedNode:
    """A node the caller may not read (an access policy hides it): where it is in the graph, nothing
    else, so the graph's shape stays honest without telling what the asset is."""

    asset_id: UUID
    depth: int
    redacted: bool = True

    qualified_name = ""  # (a class constant, not a field) sorts first and labels nothing
    placeholder = False


REDACTED_LABEL = "(redacted)"


@dataclass(slots=True)
class ColumnEdge:
    downstream_column: str
    upstream_column: str
    transformation: str | None = None


@dataclass(slots=True)
class LineageEdge:
    edge_id: UUID
    upstream_id: UUID
    downstream_id: UUID
    process_id: UUID | None = None
    process_qualified_name: str | None = None
    columns: list[ColumnEdge] | None = None  # None: not asked for; []: asked, there are none


class LineageGraph(BaseModel):
    root: UUID
    direction: Direction
    depth: int  # the depth asked for, after clamping to MAX_DEPTH
    depth_reached: int  # the farthest node's distance
    node_limit: int
    truncated: bool  # the node (or edge) limit cut the answer short
    nodes: list[LineageNode | RedactedNode]
    # Stored edges (upstream → downstream, through a process). Both ends are nodes, except around a
    # process that is itself a node (the root job): its edges stand for upstream → job → downstream,
    # and walking one direction from the job only that half is in the answer, so the other end may
    # be outside ``nodes``.
    edges: list[LineageEdge]


@dataclass(slots=True)
class PathStep:
    asset_id: UUID
    qualified_name: str


@dataclass(slots=True)
class ImpactedAsset:
    asset_id: UUID
    qualified_name: str
    type: str
    name: str
    placeholder: bool
    distance: int
    path: list[PathStep]  # one shortest path, from the analysed asset to this one, both included
    deleted: bool = False


class ImpactReport(BaseModel):
    root: UUID
    max_depth: int
    truncated: bool
    assets: list[ImpactedAsset]


# ---------------------------------------------------------------- renderers


def _mermaid_label(text: str) -> str:
    # Inside a quoted Mermaid label only these characters mean something; entity codes are the
    # documented escape. Line breaks would end the statement.
    out = []
    for ch in text:
        if ch in '"#<>&`|':
            out.append(f"#{ord(ch)};")
        elif ch < " " or ch == "\x7f":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _dot_string(text: str) -> str:
    # DOT escString: backslash sequences (\N, \G, \l) are live in labels, so escape the backslash too.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(" " if ch < " " or ch == "\x7f" else ch for ch in escaped) + '"'


def _label(node: LineageNode | RedactedNode) -> str:
    return REDACTED_LABEL if isinstance(node, RedactedNode) else node.qualified_name


def _node_ids(graph: LineageGraph) -> dict[UUID, str]:
    # Short positional ids: asset ids start with digits and carry hyphens, which Mermaid misreads.
    return {node.asset_id: f"n{i}" for i, node in enumerate(graph.nodes)}


def _drawable(graph: LineageGraph, ids: dict[UUID, str]) -> Iterable[tuple[str, str, str | None]]:
    """(from, to, label) of each arrow to draw, each once. An edge whose process is a node of the
    answer (the walk started from, or went through, that job) is drawn through it, ``up → job → down``,
    as OpenLineage and Marquez draw it, without the half whose end is not in the answer; any other
    edge is one arrow labelled with its process."""
    drawn: dict[tuple[str, str, str | None], None] = {}
    for e in graph.edges:
        up, down = ids.get(e.upstream_id), ids.get(e.downstream_id)
        job = ids.get(e.process_id) if e.process_id is not None else None
        if job is not None:
            if up is not None:
                drawn[(up, job, None)] = None
            if down is not None:
                drawn[(job, down, None)] = None
        elif up is not None and down is not None:
            drawn[(up, down, e.process_qualified_name)] = None
    return drawn


def to_mermaid(graph: LineageGraph) -> str:
    """A Mermaid flowchart; paste it into any Mermaid renderer. Placeholders are drawn dashed."""
    ids = _node_ids(graph)
    lines = ["flowchart LR"]
    lines += [f'    {ids[n.asset_id]}["{_mermaid_label(_label(n))}"]' for n in graph.nodes]
    for up, down, process in _drawable(graph, ids):
        label = f'|"{_mermaid_label(process)}"|' if process else ""
        lines.append(f"    {up} -->{label} {down}")
    placeholders = [ids[n.asset_id] for n in graph.nodes if n.placeholder]
    if placeholders:
        lines.append("    classDef placeholder stroke-dasharray: 5 5")
        lines.append(f"    class {','.join(placeholders)} placeholder")
    return "\n".join(lines) + "\n"


def to_dot(graph: LineageGraph) -> str:
    """A Graphviz digraph; render with ``dot -Tsvg``. Placeholders are drawn dashed."""
    ids = _node_ids(graph)
    lines = ["digraph lineage {", "    rankdir=LR;", "    node [shape=box];"]
    for n in graph.nodes:
        style = ", style=dashed" if n.placeholder else ""
        lines.append(f"    {ids[n.asset_id]} [label={_dot_string(_label(n))}{style}];")
    for up, down, process in _drawable(graph, ids):
        label = f" [label={_dot_string(process)}]" if process else ""
        lines.append(f"    {up} -> {down}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"
