"""The OpenLineage connector's pure parts: validation, translation, run-state rules, gzip bounds, graph ids."""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lily.connectors.openlineage import facets, graph, runs, translate
from lily.connectors.openlineage.events import DatasetEvent, JobEvent, RunEvent, parse_batch, parse_event
from lily.connectors.openlineage.router import MalformedBody, gunzip
from lily.domain.errors import Invalid, PayloadTooLarge
from lily.domain.events import ASSET_UPSERT, LINEAGE_UPSERT

SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def run_event(state: str = "START", *, when: datetime = T0, run_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": state,
        "eventTime": when.isoformat(),
        "producer": "https://example.com/producer",
        "schemaURL": SPEC + "RunEvent",
        "run": {"runId": run_id or str(uuid.uuid4())},
        "job": {"namespace": "etl", "name": "daily"},
        **extra,
    }


def fields_of(err: Invalid) -> set[str]:
    return {e["field"] for e in err.extra["errors"]}


# ---------------------------------------------------------------- validation


def test_kinds_from_schema_url_or_shape() -> None:
    assert isinstance(parse_event(run_event()), RunEvent)
    ds = {
        "eventTime": T0.isoformat(),
        "producer": "p",
        "schemaURL": SPEC + "DatasetEvent",
        "dataset": {"namespace": "pg", "name": "t"},
    }
    assert isinstance(parse_event(ds), DatasetEvent)
    job = {
        "eventTime": T0.isoformat(),
        "producer": "p",
        "schemaURL": "https://openlineage.io/spec/2-0-0/x.json",
        "job": {"namespace": "etl", "name": "j"},
    }
    assert isinstance(parse_event(job), JobEvent)
    # Older producers wrote "#/definitions/RunEvent".
    assert isinstance(parse_event({**run_event(), "schemaURL": "https://x.io/s.json#/definitions/RunEvent"}), RunEvent)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.pop("eventType"), "eventType"),
        (lambda e: e["run"].pop("runId"), "run.runId"),
        (lambda e: e["run"].update(runId="not-a-uuid"), "run.runId"),
        (lambda e: e.pop("job"), "job"),
        (lambda e: e["job"].pop("name"), "job.name"),
        (lambda e: e.update(eventType="DONE"), "eventType"),
        (lambda e: e.update(eventTime="yesterday"), "eventTime"),
        (lambda e: e.update(schemaURL="not a url"), "schemaURL"),
        (lambda e: e.update(schemaURL=SPEC + "Nonsense"), "schemaURL"),
        (lambda e: e.update(inputs="orders"), "inputs"),
        (lambda e: e.update(outputs=[{"namespace": "pg"}]), "outputs[0].name"),
        (
            lambda e: e.update(outputs=[{"namespace": "pg", "name": "t", "facets": {"schema": {"fields": [{}]}}}]),
            "outputs[0].facets.schema.fields[0].name",
        ),
    ],
)
def test_bad_events_name_the_field(mutate: Any, field: str) -> None:
    event = run_event()
    mutate(event)
    with pytest.raises(Invalid) as exc:
        parse_event(event)
    assert field in fields_of(exc.value), exc.value.extra


def test_batch_names_every_bad_index() -> None:
    bad = run_event()
    del bad["run"]["runId"]
    with pytest.raises(Invalid) as exc:
        parse_batch([run_event(), bad, run_event(), "nope"])
    assert exc.value.extra["indexes"] == [1, 3]
    assert "[1].run.runId" in fields_of(exc.value)
    assert "index 1, 3" in exc.value.detail
    with pytest.raises(Invalid):
        parse_batch({"not": "a list"})
    with pytest.raises(Invalid):
        parse_batch([])


# ---------------------------------------------------------------- translation


def test_run_event_translation() -> None:
    event = parse_event(
        run_event(
            inputs=[
                {
                    "namespace": "pg",
                    "name": "orders",
                    "facets": {
                        "schema": {
                            "fields": [
                                {"name": "amount", "type": "NUMERIC"},
                                {"name": "addr", "type": "STRUCT", "fields": [{"name": "city", "type": "TEXT"}]},
                            ]
                        }
                    },
                },
                # a dataset both read and written: it stays a downstream, without a self-loop
                {"namespace": "pg", "name": "totals"},
            ],
            outputs=[
                {
                    "namespace": "pg",
                    "name": "totals",
                    "facets": {
                        "documentation": {"description": "Totals"},
                        "columnLineage": {
                            "fields": {
                                "total": {
                                    "inputFields": [
                                        {"namespace": "pg", "name": "orders", "field": "amount"},
                                        {"namespace": "pg", "name": "totals", "field": "total"},
                                        {"namespace": "pg", "name": "fx", "field": "rate"},
                                    ],
                                    "transformationDescription": "sum(amount * rate)",
                                }
                            }
                        },
                    },
                    "outputFacets": {"outputStatistics": {"rowCount": 3}},
                }
            ],
        )
    )
    out = translate.translate(event, "acme", "key:k", "req-1")
    assert [(e.kind, e.subject) for e in out] == [
        (ASSET_UPSERT, "pg/orders"),
        (ASSET_UPSERT, "pg/totals"),
        (ASSET_UPSERT, "etl/daily"),
        (runs.OPENLINEAGE_RUN, "etl/daily"),
        (LINEAGE_UPSERT, "etl/daily"),
    ]
    assert all(e.source == "openlineage" and e.request_id == "req-1" for e in out)
    orders, totals, job, run, lineage = (e.payload for e in out)
    assert orders["type"] == "dataset" and orders["name"] == "orders"
    assert [c["name"] for c in orders["attributes"]["columns"]] == ["amount", "addr", "addr.city"]
    assert totals["description"] == "Totals"
    assert "columnLineage" not in totals["attributes"]["openlineage"]["facets"]
    assert "outputStatistics" not in str(totals)  # run statistics are not dataset state
    assert job == {"qualified_name": "etl/daily", "type": "job", "name": "daily"}
    assert run["state"] == "START" and run["event_time"] == runs.timestamp(T0)
    assert lineage["process"] == "etl/daily"
    assert lineage["downstreams"] == ["pg/totals"]
    assert lineage["upstreams"] == ["pg/orders", "pg/fx"]  # fx only appears in column lineage
    assert lineage["column_mappings"] == [
        {
            "downstream": "pg/totals",
            "column": "total",
            "transformation": "sum(amount * rate)",
            "upstreams": [{"asset": "pg/orders", "column": "amount"}, {"asset": "pg/fx", "column": "rate"}],
        }
    ]
    assert lineage["types"] == {"pg/orders": "dataset", "pg/fx": "dataset", "pg/totals": "dataset", "etl/daily": "job"}
    # The same event again gives the same Lily events (event ids aside): what makes re-sends no-ops.
    again = translate.translate(event, "acme", "key:k", "req-1")
    assert [e.payload for e in again] == [e.payload for e in out]


def test_no_edges_without_both_sides_and_facets_bounded() -> None:
    big = {"blob": "x" * (facets.MAX_FACET_BYTES + 1)}
    event = parse_event(
        run_event(outputs=[{"namespace": "pg", "name": "t", "facets": {"custom": big, "gone": {"_deleted": True}}}])
    )
    out = translate.translate(event, "acme", "key:k")
    assert LINEAGE_UPSERT not in {e.kind for e in out}
    kept = out[0].payload["attributes"]["openlineage"]["facets"]
    assert kept == {"custom": {"_truncated": True, "_bytes": len(big["blob"]) + 11}}


def test_job_named_like_a_dataset_is_refused() -> None:
    event = parse_event(run_event(inputs=[{"namespace": "etl", "name": "daily"}]))
    with pytest.raises(Invalid):
        translate.translate(event, "acme", "key:k")


# ---------------------------------------------------------------- run state


def change(state: str, when: datetime, run_id: uuid.UUID, error: str | None = None) -> runs.RunChange:
    return runs.RunChange(
        run_id=run_id, state=state, event_time=when, job_namespace="etl", job_name="daily", error=error
    )


def test_latest_event_time_wins_whatever_the_arrival_order() -> None:
    rid = uuid.uuid4()
    attrs: dict[str, Any] = {}
    for state, minutes in (("START", 0), ("COMPLETE", 2), ("RUNNING", 1), ("OTHER", 3)):
        attrs = {**attrs, **runs.apply_change(attrs, change(state, T0 + timedelta(minutes=minutes), rid))}
    run = attrs["runs"][str(rid)]
    assert run["state"] == "COMPLETE"  # RUNNING came late; OTHER adds metadata, not a state
    assert [h["state"] for h in run["history"]] == ["START", "RUNNING", "COMPLETE", "OTHER"]
    assert run["started_at"] == runs.timestamp(T0)
    assert run["ended_at"] == runs.timestamp(T0 + timedelta(minutes=2))
    assert attrs["last_run"]["state"] == "COMPLETE"
    # A re-send changes nothing.
    assert runs.apply_change(attrs, change("RUNNING", T0 + timedelta(minutes=1), rid)) == {
        k: attrs[k] for k in ("runs", "last_run")
    }


def test_equal_times_prefer_the_later_life_cycle_step_and_keep_errors() -> None:
    rid = uuid.uuid4()
    attrs = runs.apply_change({}, change("FAIL", T0, rid, error="boom"))
    attrs = runs.apply_change(attrs, change("START", T0, rid))
    assert attrs["runs"][str(rid)]["state"] == "FAIL"
    assert attrs["runs"][str(rid)]["error"] == "boom"


def test_job_facets_of_runs_merge_facet_by_facet() -> None:
    rid = uuid.uuid4()
    sql = {"_producer": "p", "query": "select 1"}
    job_type = {"processingType": "BATCH", "integration": "SQL"}
    start = change("START", T0, rid).model_copy(update={"job_facets": {"sql": sql, "jobType": job_type}})
    attrs = runs.apply_change({}, start)
    assert attrs["openlineage"] == {"namespace": "etl", "name": "daily", "facets": {"sql": sql, "jobType": job_type}}
    # COMPLETE carries fewer facets: none is lost. A ``_deleted`` facet is removed.
    done = change("COMPLETE", T0 + timedelta(minutes=1), rid).model_copy(
        update={"job_facets": {"jobType": job_type, "sql": {"_deleted": True}}}
    )
    attrs = {**attrs, **runs.apply_change(attrs, done)}
    assert attrs["openlineage"]["facets"] == {"jobType": job_type}
    # Without job facets the attribute is left alone.
    assert "openlineage" not in runs.apply_change(attrs, change("OTHER", T0, rid))


def test_run_event_job_facets_travel_with_the_run_change() -> None:
    event = parse_event(
        {**run_event(), "job": {"namespace": "etl", "name": "daily", "facets": {"sql": {"query": "select 1"}}}}
    )
    job, run = (e.payload for e in translate.translate(event, "acme", "key:k"))
    assert "attributes" not in job
    assert run["job_facets"] == {"sql": {"query": "select 1"}}


def test_runs_are_bounded_and_last_run_is_the_newest() -> None:
    attrs: dict[str, Any] = {}
    ids = [uuid.uuid4() for _ in range(runs.MAX_RUNS + 5)]
    for i, rid in enumerate(ids):
        attrs = runs.apply_change(attrs, change("START", T0 + timedelta(minutes=i), rid))
    assert len(attrs["runs"]) == runs.MAX_RUNS
    assert str(ids[0]) not in attrs["runs"]
    assert attrs["last_run"]["run_id"] == str(ids[-1])
    # A late event of a run already dropped as too old changes nothing.
    assert runs.apply_change(attrs, change("COMPLETE", T0 + timedelta(seconds=1), ids[0])) == attrs


# ---------------------------------------------------------------- gzip and graph ids


def test_gunzip_is_bounded() -> None:
    assert gunzip(gzip.compress(b"{}") + gzip.compress(b" "), 100) == b"{} "
    with pytest.raises(PayloadTooLarge):
        gunzip(gzip.compress(b"0" * 10_000_000), 1024)  # ~10 KB of gzip, 10 MB of output
    with pytest.raises(MalformedBody):
        gunzip(b"not gzip", 1024)
    with pytest.raises(MalformedBody):
        gunzip(gzip.compress(b"{}" * 100)[:-12], 1024)


def test_qualified_names_split_back_into_namespace_and_name() -> None:
    assert graph.split_qualified_name("postgres://db:5432/public.orders") == ("postgres://db:5432", "public.orders")
    assert graph.split_qualified_name("s3://bucket/path/to/file") == ("s3://bucket", "path/to/file")
    assert graph.split_qualified_name("file//data/x.csv") == ("file", "/data/x.csv")
    assert graph.candidate_names("postgres://db:5432:public.orders") == [
        "postgres///db:5432:public.orders",
        "postgres://db/5432:public.orders",
        "postgres://db:5432/public.orders",
    ]
