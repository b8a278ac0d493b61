"""One OpenLineage event → the Lily events that record it. Pure: no I/O, same input, same output.

- every dataset (inputs, outputs, a DatasetEvent's dataset) → ``asset.upsert`` of type ``dataset``;
  its ``schema`` facet becomes ``attributes.columns``, ``documentation`` the description, ``ownership``
  the owners, and the other facets are kept, bounded, under ``attributes.openlineage``;
- the job → ``asset.upsert`` of type ``job`` (same facet rules, except that a RunEvent's job facets
  travel with the run change and are merged facet by facet: see :mod:`.runs`);
- a RunEvent's state change → ``openlineage.run`` on the job;
- inputs → job → outputs → one ``lineage.upsert`` with the job as process; the outputs'
  ``columnLineage`` facets become its column mappings.

All of them are appended in one transaction by the caller, so an event is recorded whole or not at all.
Re-sending an event produces the same Lily events, whose application changes nothing the second time
(upserts that change nothing create no version; the run history is keyed by state and time).

Input/output facets (``inputFacets``, ``outputFacets``: row counts, bytes of this run) are not kept on
the dataset: they change every run and would make a new dataset version each time.
"""

from __future__ import annotations

from typing import Any

from lily.connectors.openlineage.events import (
    ColumnLineageField,
    Dataset,
    DatasetEvent,
    Event,
    InputDataset,
    Job,
    OutputDataset,
    RunEvent,
    SchemaField,
)
from lily.connectors.openlineage.facets import ATTRIBUTE, bounded, kept
from lily.connectors.openlineage.runs import OPENLINEAGE_RUN, timestamp
from lily.domain.assets import default_name
from lily.domain.classification import BLOCKS_PROPAGATION
from lily.domain.errors import Invalid
from lily.domain.events import ASSET_UPSERT, LINEAGE_UPSERT, NewEvent
from lily.domain.lineage import MAX_EDGES_PER_REQUEST, MAX_REFS

SOURCE = "openlineage"
DATASET, JOB = "dataset", "job"
COLUMNS = "columns"
MAX_NAME_CHARS = 512  # Lily's display-name limit


def translate(event: Event, tenant_id: str, actor: str, request_id: str | None = None) -> list[NewEvent]:
    """The Lily events recording ``event``, in the order they must be applied."""

    def new(subject: str, kind: str, payload: dict[str, Any]) -> NewEvent:
        return NewEvent(tenant_id, subject, kind, payload, actor, request_id, source=SOURCE)

    if isinstance(event, DatasetEvent):
        out = [new(event.dataset.qualified_name, ASSET_UPSERT, dataset_payload(event.dataset))]
        lineage = lineage_payload(None, [], [event.dataset])
        if lineage is not None:
            out.append(new(event.dataset.qualified_name, LINEAGE_UPSERT, lineage))
        return out

    job = event.job
    datasets = _distinct(event.inputs, event.outputs)
    if job.qualified_name in datasets:
        raise Invalid(f"the job and a dataset are both named {job.qualified_name!r}", field="job")
    out = [new(qn, ASSET_UPSERT, dataset_payload(ds)) for qn, ds in datasets.items()]
    # The job's events share its subject, so the log applies them in this order.
    # A run's job facets are merged facet by facet by the run handler (START usually carries more of
    # them than COMPLETE; replacing them as a whole would make two job versions per run out of nothing).
    # A JobEvent states the job as it is: its facets replace the recorded ones.
    out.append(new(job.qualified_name, ASSET_UPSERT, job_payload(job, with_facets=not isinstance(event, RunEvent))))
    if isinstance(event, RunEvent):
        out.append(new(job.qualified_name, OPENLINEAGE_RUN, run_payload(event)))
    lineage = lineage_payload(job.qualified_name, event.inputs, event.outputs)
    if lineage is not None:
        out.append(new(job.qualified_name, LINEAGE_UPSERT, lineage))
    return out


def _distinct(inputs: list[InputDataset], outputs: list[OutputDataset]) -> dict[str, Dataset]:
    """Each dataset once; one both read and written is recorded with the facets it was written with."""
    found: dict[str, Dataset] = {}
    for ds in [*inputs, *outputs]:
        before = found.get(ds.qualified_name)
        if before is None:
            found[ds.qualified_name] = ds
        else:
            merged = {**_raw_facets(before), **_raw_facets(ds)}
            found[ds.qualified_name] = Dataset.model_validate(
                {"namespace": ds.namespace, "name": ds.name, "facets": merged}
            )
    return found


# ---------------------------------------------------------------- assets


def _raw_facets(node: Dataset | Job) -> dict[str, Any]:
    # exclude_unset: what the producer sent (custom facets and fields included), no defaults added.
    return node.facets.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _display_name(name: str, qualified_name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else default_name(qualified_name)[:MAX_NAME_CHARS]


def _common(node: Dataset | Job, asset_type: str, *, with_facets: bool = True) -> dict[str, Any]:
    qn = node.qualified_name
    payload: dict[str, Any] = {"qualified_name": qn, "type": asset_type, "name": _display_name(node.name, qn)}
    typed = node.facets
    if typed.documentation is not None:
        payload["description"] = typed.documentation.description
    if typed.ownership is not None:
        payload["owners"] = list(dict.fromkeys(o.name for o in typed.ownership.owners))
    facets = bounded(_raw_facets(node)) if with_facets else {}
    # Sent only when there are facets: an event without them (common for inputs) must not erase the
    # ones an earlier event recorded, and upserts replace an attribute key as a whole.
    if facets:
        payload["attributes"] = {ATTRIBUTE: {"namespace": node.namespace, "name": node.name, "facets": facets}}
    return payload


def dataset_payload(ds: Dataset) -> dict[str, Any]:
    payload = _common(ds, DATASET)
    if ds.facets.schema_ is not None:
        payload.setdefault("attributes", {})[COLUMNS] = columns(ds.facets.schema_.fields)
    return payload


def job_payload(job: Job, *, with_facets: bool = True) -> dict[str, Any]:
    payload = _common(job, JOB, with_facets=with_facets)
    lily = job.facets.lily
    # Only an event that carries the facet sets the block (upserts replace an attribute key as a whole):
    # a later event of the same job without it keeps what was declared.
    if lily is not None and (lily.deleted or lily.blocks_propagation is not None):
        blocks = [] if lily.deleted else list(dict.fromkeys(lily.blocks_propagation or ()))
        payload.setdefault("attributes", {})[BLOCKS_PROPAGATION] = blocks
    return payload


def columns(fields: list[SchemaField], prefix: str = "") -> list[dict[str, Any]]:
    """Schema fields as Lily columns; nested struct fields become ``parent.child``."""
    out: list[dict[str, Any]] = []
    for f in fields:
        name = f"{prefix}{f.name}"
        out.append({"name": name, "type": f.type, "description": f.description})
        if f.fields:
            out.extend(columns(f.fields, prefix=f"{name}."))
    return out


# ---------------------------------------------------------------- runs


def run_payload(event: RunEvent) -> dict[str, Any]:
    error = event.run.facets.get("errorMessage")
    message = error.get("message") if isinstance(error, dict) else None
    return {
        "run_id": str(event.run.runId),
        "state": event.eventType,
        "event_time": timestamp(event.eventTime),
        "job_namespace": event.job.namespace,
        "job_name": event.job.name,
        "error": message if isinstance(message, str) and event.eventType == "FAIL" else None,
        "job_facets": kept(_raw_facets(event.job)),
    }


# ---------------------------------------------------------------- lineage


def _transformation(spec: ColumnLineageField) -> str | None:
    if spec.transformationDescription:
        return spec.transformationDescription
    if spec.transformationType:
        return spec.transformationType
    # Facet 1-2-0 moved the description onto each input field's ``transformations``.
    kinds = dict.fromkeys(
        "/".join(str(t[k]) for k in ("type", "subtype") if t.get(k))
        for f in spec.inputFields
        for t in f.transformations
    )
    described = ", ".join(k for k in kinds if k)
    return described or None


def lineage_payload(
    process: str | None, inputs: list[InputDataset] | list[Dataset], outputs: list[OutputDataset] | list[Dataset]
) -> dict[str, Any] | None:
    """The ``lineage.upsert`` payload for inputs → (process) → outputs, or None when there is no edge."""
    downs = list(dict.fromkeys(ds.qualified_name for ds in outputs))
    written = set(downs)
    ups = list(dict.fromkeys(ds.qualified_name for ds in inputs))
    mappings: list[dict[str, Any]] = []
    for ds in outputs:
        facet = ds.facets.columnLineage
        if facet is None:
            continue
        for column, spec in facet.fields.items():
            sources: dict[tuple[str, str], None] = {}
            for f in spec.inputFields:
                # A column computed from an output (itself, or a sibling output) implies no edge from
                # the inputs; Lily refuses self-loops, so such entries are left out.
                if f.qualified_name not in written:
                    sources[(f.qualified_name, f.field)] = None
            if not sources:
                continue
            ups.extend(qn for qn, _ in sources if qn not in ups)
            mappings.append(
                {
                    "downstream": ds.qualified_name,
                    "column": column,
                    "upstreams": [{"asset": qn, "column": col} for qn, col in sources],
                    "transformation": _transformation(spec),
                }
            )
    # A dataset both read and written (an incremental table) stays a downstream: the other inputs
    # still get their edges to it, and it gets no edge to itself.
    ups = [qn for qn in ups if qn not in written]
    if not ups or not downs:
        return None
    if process is not None and process in {*ups, *downs}:
        raise Invalid(f"the job {process!r} is also named as a dataset of its own lineage", field="job")
    if len(ups) > MAX_REFS or len(downs) > MAX_REFS or len(ups) * len(downs) > MAX_EDGES_PER_REQUEST:
        raise Invalid(
            f"{len(ups)} inputs x {len(downs)} outputs is more lineage than one event may carry "
            f"(at most {MAX_EDGES_PER_REQUEST} edges)",
            field="outputs",
        )
    if len(mappings) > MAX_EDGES_PER_REQUEST:
        raise Invalid(
            f"{len(mappings)} column lineage entries; at most {MAX_EDGES_PER_REQUEST}",
            field="outputs.facets.columnLineage",
        )
    # ``types``: a name nobody has written yet becomes a placeholder of the right type, not "unknown".
    types = {qn: DATASET for qn in [*ups, *downs]}
    if process is not None:
        types[process] = JOB
    return {
        "upstreams": ups,
        "downstreams": downs,
        "process": process,
        "column_mappings": mappings,
        "types": types,
        "source": SOURCE,
    }
