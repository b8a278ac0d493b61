"""Lily's lineage in Marquez's graph shape (``GET /api/v1/lineage``). Pure: rows in, JSON out.

Marquez draws jobs as nodes between datasets (``dataset → job → dataset``); Lily keeps dataset-to-dataset
edges with the job as the edge's process. So an edge with a process becomes two Marquez edges through
the job's node, and one without becomes a direct edge. Node ids are Marquez's: ``dataset:{ns}:{name}``
and ``job:{ns}:{name}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from lily.connectors.openlineage.facets import ATTRIBUTE
from lily.connectors.openlineage.runs import LAST_RUN
from lily.connectors.openlineage.translate import COLUMNS, JOB

Link = tuple[UUID, UUID, UUID | None]  # (upstream, downstream, process)

# Marquez's run states, from OpenLineage's event types.
_RUN_STATE = {
    "START": "RUNNING",
    "RUNNING": "RUNNING",
    "COMPLETE": "COMPLETED",
    "FAIL": "FAILED",
    "ABORT": "ABORTED",
    "OTHER": "NEW",
}


def split_qualified_name(qualified_name: str) -> tuple[str, str]:
    """``{namespace}/{name}`` back into its parts, for assets that carry no OpenLineage identity
    (placeholders, assets written through Lily's API). A namespace may be a URI: the slashes of its
    ``scheme://`` are not the separator (``s3://bucket/path`` → ``s3://bucket``, ``path``)."""
    start = qualified_name.find("://")
    start = start + 3 if start >= 0 else 0
    cut = qualified_name.find("/", start)
    if cut < 0:
        return "", qualified_name
    return qualified_name[:cut], qualified_name[cut + 1 :]


def identity(row: dict[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an asset: as OpenLineage sent them when it did, else from the name."""
    ol = row["attributes"].get(ATTRIBUTE)
    if isinstance(ol, dict) and isinstance(ol.get("namespace"), str) and isinstance(ol.get("name"), str):
        return ol["namespace"], ol["name"]
    return split_qualified_name(row["qualified_name"])


def node_id(row: dict[str, Any]) -> str:
    namespace, name = identity(row)
    return f"{'job' if row['type'] == JOB else 'dataset'}:{namespace}:{name}"


def candidate_names(rest: str, limit: int = 64) -> list[str]:
    """Qualified names ``{ns}:{name}`` (a node id without its prefix) may stand for. Namespaces and
    names both may hold colons (``postgres://host:5432``), so every split is a candidate; the store
    says which exist."""
    out = []
    for i, ch in enumerate(rest):
        if ch == ":":
            ns, name = rest[:i], rest[i + 1 :]
            if name:
                out.append(f"{ns}/{name}" if ns else name)
            if len(out) >= limit:
                break
    return out


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _facets(row: dict[str, Any]) -> dict[str, Any]:
    ol = row["attributes"].get(ATTRIBUTE)
    facets = ol.get("facets") if isinstance(ol, dict) else None
    return facets if isinstance(facets, dict) else {}


def _dataset_data(row: dict[str, Any]) -> dict[str, Any]:
    namespace, name = identity(row)
    columns = row["attributes"].get(COLUMNS)
    return {
        "id": {"namespace": namespace, "name": name},
        "type": "DB_TABLE",
        "name": name,
        "physicalName": name,
        "createdAt": _time(row["created_at"]),
        "updatedAt": _time(row["updated_at"]),
        "namespace": namespace,
        "sourceName": namespace,
        "fields": [
            {"name": c.get("name"), "type": c.get("type"), "tags": [], "description": c.get("description")}
            for c in (columns if isinstance(columns, list) else [])
            if isinstance(c, dict)
        ],
        "tags": list(row["tags"]),
        "lastModifiedAt": None,
        "description": row["description"],
        "facets": _facets(row),
        "deleted": row["deleted_at"] is not None,
        # Lily's own identity, for clients that want to follow up through /lily/v1.
        "assetId": str(row["asset_id"]),
        "qualifiedName": row["qualified_name"],
        "placeholder": row["placeholder"],
    }


def _job_data(row: dict[str, Any], inputs: list[dict[str, str]], outputs: list[dict[str, str]]) -> dict[str, Any]:
    namespace, name = identity(row)
    facets = _facets(row)
    job_type = _dict(facets.get("jobType"))
    location = _dict(facets.get("sourceCodeLocation"))
    last = row["attributes"].get(LAST_RUN)
    latest_run = None
    if isinstance(last, dict):
        latest_run = {
            "id": last.get("run_id"),
            "state": _RUN_STATE.get(str(last.get("state")), "NEW"),
            "startedAt": last.get("started_at"),
            "endedAt": last.get("ended_at"),
            "updatedAt": last.get("event_time"),
        }
    return {
        "id": {"namespace": namespace, "name": name},
        "type": str(job_type.get("processingType") or "BATCH"),
        "name": name,
        "simpleName": name.rsplit(".", 1)[-1],
        "parentJobName": None,
        "createdAt": _time(row["created_at"]),
        "updatedAt": _time(row["updated_at"]),
        "namespace": namespace,
        "inputs": inputs,
        "outputs": outputs,
        "location": location.get("url"),
        "description": row["description"],
        "facets": facets,
        "latestRun": latest_run,
        "deleted": row["deleted_at"] is not None,
        "assetId": str(row["asset_id"]),
        "qualifiedName": row["qualified_name"],
        "placeholder": row["placeholder"],
    }


def marquez_graph(rows: dict[UUID, dict[str, Any]], links: Iterable[Link]) -> dict[str, Any]:
    """``{"graph": [...]}`` for the assets in ``rows`` and the Lily edges ``links`` between them."""
    ids = {asset_id: node_id(row) for asset_id, row in rows.items()}
    edges: set[tuple[str, str]] = set()
    job_io: dict[UUID, tuple[dict[UUID, None], dict[UUID, None]]] = {}
    for up, down, process in links:
        if up not in ids or down not in ids:
            continue
        if process is not None and process in ids:
            edges.add((ids[up], ids[process]))
            edges.add((ids[process], ids[down]))
            ins, outs = job_io.setdefault(process, ({}, {}))
            ins[up] = None
            outs[down] = None
        else:
            edges.add((ids[up], ids[down]))
    incoming: dict[str, list[dict[str, str]]] = {}
    outgoing: dict[str, list[dict[str, str]]] = {}
    for origin, destination in sorted(edges):
        edge = {"origin": origin, "destination": destination}
        outgoing.setdefault(origin, []).append(edge)
        incoming.setdefault(destination, []).append(edge)
    # Two assets map to one node id only if one's OpenLineage identity spells the other's name; the last wins.
    by_node = {ids[a]: row for a, row in rows.items()}
    graph = []
    for nid in sorted(by_node):
        row = by_node[nid]
        if row["type"] == JOB:
            ins, outs = job_io.get(row["asset_id"], ({}, {}))
            data = _job_data(row, [_ref(rows[a]) for a in ins], [_ref(rows[a]) for a in outs])
        else:
            data = _dataset_data(row)
        graph.append(
            {
                "id": nid,
                "type": "JOB" if row["type"] == JOB else "DATASET",
                "data": data,
                "inEdges": incoming.get(nid, []),
                "outEdges": outgoing.get(nid, []),
            }
        )
    return {"graph": graph}


def _ref(row: dict[str, Any]) -> dict[str, str]:
    namespace, name = identity(row)
    return {"namespace": namespace, "name": name}
