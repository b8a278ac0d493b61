"""OpenLineage end to end: the real ``openlineage-python`` client and its HTTP transport (API key, gzip)
against Lily served by uvicorn on a loopback port; malformed input by hand with httpx.

One server and one database serve the whole module (starting them per test would cost more than the
tests); each test works in a tenant of its own. The server runs in a thread with its own event loop, so
these tests are synchronous: the client blocks, as it does in producers.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
import requests
import uvicorn
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    JobEvent,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import (
    column_lineage_dataset,
    documentation_dataset,
    error_message_run,
    job_type_job,
    schema_dataset,
)
from openlineage.client.generated.base import DatasetFacet
from openlineage.client.serde import Serde
from openlineage.client.transport.http import ApiKeyTokenProvider, HttpCompression, HttpConfig, HttpTransport
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lily import admin
from lily.api.app import create_app
from lily.config import Settings
from lily.store.db import Database

T = TypeVar("T")
PROBLEM = "application/problem+json"
NS = "postgres://warehouse:5432"
T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
WAIT_SECONDS = 20.0


# ---------------------------------------------------------------- the server


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh loop in a worker thread, away from pytest-asyncio's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _new_tenant(database_url: str, tenant_id: str) -> dict[str, str]:
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        await admin.create_tenant(db, tenant_id)
        return {
            role: await admin.create_api_key(db, tenant_id, f"{role}-key", role)
            for role in ("admin", "editor", "viewer")
        }
    finally:
        await db.close()


@dataclass
class Tenant:
    tenant_id: str
    keys: dict[str, str]
    base: str

    def headers(self, role: str = "viewer", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}", **extra}

    def client(self, role: str = "editor") -> OpenLineageClient:
        """The producer's side, configured as a user would: Lily's URL, Marquez's path, key, gzip."""
        return OpenLineageClient(
            transport=HttpTransport(
                HttpConfig(
                    url=self.base,
                    endpoint="api/v1/lineage",
                    auth=ApiKeyTokenProvider({"apiKey": self.keys[role]}),
                    compression=HttpCompression.GZIP,
                    timeout=10,
                )
            )
        )


@dataclass
class Live:
    base: str
    database_url: str
    http: httpx.Client

    def tenant(self) -> Tenant:
        tenant_id = f"ol{uuid.uuid4().hex[:8]}"
        return Tenant(tenant_id, _run(_new_tenant(self.database_url, tenant_id)), self.base)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        # As the server's owner role, beneath RLS: the tests see what really is in the tables.
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def wait_applied(self, tenant: Tenant) -> None:
        """Until the pipeline has caught up (bounded), then: every event of the tenant was applied."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            # Read from the log itself (the detailed health view is for operators only).
            (waiting,) = self.sql(
                "SELECT count(*) FROM events WHERE tenant_id = %s AND status = 'accepted'", tenant.tenant_id
            )[0]
            if waiting == 0:
                break
            assert time.monotonic() < deadline, f"pipeline still behind: {waiting} event(s) not applied"
            time.sleep(0.02)  # a poll interval, not a wait for a guess
        failed = self.sql(
            "SELECT kind, subject, status, error FROM events WHERE tenant_id = %s AND status <> 'applied'",
            tenant.tenant_id,
        )
        assert not failed, failed

    def counts(self, tenant: Tenant) -> dict[str, int]:
        """What a write can add for a tenant: versions, edges, column mappings, audit entries."""
        tables = ("assets", "asset_versions", "lineage_edges", "column_lineage", "audit_log")
        return {t: self.sql(f"SELECT count(*) FROM {t} WHERE tenant_id = %s", tenant.tenant_id)[0][0] for t in tables}


def _with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


@pytest.fixture(scope="module")
def live(pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    name = f"lily_ol_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY FILE_COPY")  # type: ignore[arg-type]
    database_url = _with_dbname(pg_admin_url, name)
    home: Path = tmp_path_factory.mktemp("lily-ol")
    settings = Settings(
        database_url=database_url,
        home=home,
        jwt_secret="test-secret-" + "x" * 32,
        partitions=8,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
        max_attempts=3,
        pool_min_size=1,
        pool_max_size=8,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, database_url), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # set once the lifespan ran and the socket listens
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            yield Live(base, database_url, http)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


# ---------------------------------------------------------------- events, as producers build them


def orders_input() -> InputDataset:
    return InputDataset(
        NS,
        "public.orders",
        facets={
            "schema": schema_dataset.SchemaDatasetFacet(
                fields=[
                    schema_dataset.SchemaDatasetFacetFields(name="id", type="BIGINT", description="order id"),
                    schema_dataset.SchemaDatasetFacetFields(name="amount", type="NUMERIC"),
                    schema_dataset.SchemaDatasetFacetFields(name="day", type="DATE"),
                ]
            ),
        },
    )


def totals_output() -> OutputDataset:
    lineage = column_lineage_dataset.ColumnLineageDatasetFacet(
        fields={
            "total": column_lineage_dataset.Fields(
                inputFields=[column_lineage_dataset.InputField(NS, "public.orders", "amount")],
                transformationDescription="sum(amount)",
                transformationType="AGGREGATION",
            ),
            "day": column_lineage_dataset.Fields(
                inputFields=[column_lineage_dataset.InputField(NS, "public.orders", "day")],
                transformationDescription=None,
                transformationType="IDENTITY",
            ),
        }
    )
    return OutputDataset(
        NS,
        "public.daily_totals",
        facets={
            "schema": schema_dataset.SchemaDatasetFacet(
                fields=[
                    schema_dataset.SchemaDatasetFacetFields(name="day", type="DATE"),
                    schema_dataset.SchemaDatasetFacetFields(name="total", type="NUMERIC", description="sum of amounts"),
                ]
            ),
            "columnLineage": lineage,
            "documentation": documentation_dataset.DocumentationDatasetFacet(description="Revenue per day"),
        },
    )


def job() -> Job:
    return Job(
        "etl",
        "daily_totals",
        facets={
            "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="SQL", jobType="QUERY"),
        },
    )


def run_event(state: RunState, when: datetime, run_id: str, **run_facets: Any) -> RunEvent:
    return RunEvent(
        eventType=state,
        eventTime=when.isoformat(),
        run=Run(runId=run_id, facets=run_facets),
        job=job(),
        inputs=[orders_input()],
        outputs=[totals_output()],
    )


def lifecycle(run_id: str) -> list[RunEvent]:
    return [
        run_event(RunState.START, T0, run_id),
        run_event(RunState.RUNNING, T0 + timedelta(minutes=1), run_id),
        run_event(RunState.COMPLETE, T0 + timedelta(minutes=2), run_id),
    ]


def asset(live: Live, tenant: Tenant, qualified_name: str) -> dict[str, Any]:
    r = live.http.get("/lily/v1/metadata/search", params={"qualified_name": qualified_name}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 1, f"{qualified_name}: {items}"
    found: dict[str, Any] = items[0]
    return found


def marquez(live: Live, tenant: Tenant, node_id: str, depth: int = 20) -> httpx.Response:
    return live.http.get("/api/v1/lineage", params={"nodeId": node_id, "depth": depth}, headers=tenant.headers())


# ---------------------------------------------------------------- the happy path


def test_run_lifecycle_through_the_client(live: Live) -> None:
    tenant = live.tenant()
    run_id = str(uuid.uuid4())
    client = tenant.client()
    for event in lifecycle(run_id):
        client.emit(event)
    live.wait_applied(tenant)

    orders = asset(live, tenant, f"{NS}/public.orders")
    assert orders["type"] == "dataset" and orders["name"] == "public.orders" and not orders["placeholder"]
    assert orders["attributes"]["columns"] == [
        {"name": "id", "type": "BIGINT", "description": "order id"},
        {"name": "amount", "type": "NUMERIC", "description": None},
        {"name": "day", "type": "DATE", "description": None},
    ]
    totals = asset(live, tenant, f"{NS}/public.daily_totals")
    assert totals["description"] == "Revenue per day"
    assert [c["name"] for c in totals["attributes"]["columns"]] == ["day", "total"]
    assert "documentation" in totals["attributes"]["openlineage"]["facets"]
    assert totals["attributes"]["lily.source"] == "openlineage"

    etl = asset(live, tenant, "etl/daily_totals")
    assert etl["type"] == "job"
    assert etl["attributes"]["openlineage"]["facets"]["jobType"]["processingType"] == "BATCH"
    run = etl["attributes"]["runs"][run_id]
    assert run["state"] == "COMPLETE"
    assert [h["state"] for h in run["history"]] == ["START", "RUNNING", "COMPLETE"]
    assert run["started_at"].startswith("2026-03-01T06:00:00") and run["ended_at"].startswith("2026-03-01T06:02")
    assert etl["attributes"]["last_run"]["run_id"] == run_id

    # inputs → job → outputs, with the column lineage of the output.
    r = live.http.get(
        f"/lily/v1/metadata/lineage/{orders['asset_id']}",
        params={"direction": "downstream", "columns": "true"},
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text
    (edge,) = r.json()["edges"]
    assert edge["downstream_id"] == totals["asset_id"] and edge["process_qualified_name"] == "etl/daily_totals"
    assert sorted((c["downstream_column"], c["upstream_column"], c["transformation"]) for c in edge["columns"]) == [
        ("day", "day", "IDENTITY"),
        ("total", "amount", "sum(amount)"),
    ]


def test_marquez_graph_shape(live: Live) -> None:
    tenant = live.tenant()
    run_id = str(uuid.uuid4())
    client = tenant.client()
    for event in lifecycle(run_id):
        client.emit(event)
    live.wait_applied(tenant)

    orders_id, job_id = f"dataset:{NS}:public.orders", "job:etl:daily_totals"
    totals_id = f"dataset:{NS}:public.daily_totals"
    for root in (orders_id, job_id, totals_id):
        r = marquez(live, tenant, root)
        assert r.status_code == 200, r.text
        graph = {n["id"]: n for n in r.json()["graph"]}
        assert set(graph) == {orders_id, job_id, totals_id}, root
        assert graph[orders_id]["type"] == "DATASET" and graph[job_id]["type"] == "JOB"
        assert graph[orders_id]["outEdges"] == [{"origin": orders_id, "destination": job_id}]
        assert graph[job_id]["inEdges"] == [{"origin": orders_id, "destination": job_id}]
        assert graph[job_id]["outEdges"] == [{"origin": job_id, "destination": totals_id}]
        assert graph[totals_id]["inEdges"] == [{"origin": job_id, "destination": totals_id}]
        assert graph[totals_id]["outEdges"] == []
    job_data = graph[job_id]["data"]
    assert job_data["id"] == {"namespace": "etl", "name": "daily_totals"}
    assert job_data["inputs"] == [{"namespace": NS, "name": "public.orders"}]
    assert job_data["outputs"] == [{"namespace": NS, "name": "public.daily_totals"}]
    assert job_data["latestRun"]["id"] == run_id and job_data["latestRun"]["state"] == "COMPLETED"
    orders_data = graph[orders_id]["data"]
    assert orders_data["id"] == {"namespace": NS, "name": "public.orders"}
    assert [f["name"] for f in orders_data["fields"]] == ["id", "amount", "day"]

    # depth 0 is the node alone; unknown nodes are 404; malformed ids 4xx.
    r = marquez(live, tenant, orders_id, depth=0)
    assert [n["id"] for n in r.json()["graph"]] == [orders_id]
    for unknown in (f"dataset:{NS}:public.nope", "job:etl:public.orders", f"job:{NS}:public.orders"):
        r = marquez(live, tenant, unknown)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, (unknown, r.text)
    for bad in ("table:x:y", "dataset:nocolon", "run:" + run_id):
        r = marquez(live, tenant, bad)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "nodeId", (bad, r.text)
    assert live.http.get("/api/v1/lineage", params={"nodeId": orders_id}).status_code == 401


# ---------------------------------------------------------------- order and re-sends


def test_events_out_of_order_leave_the_latest_state(live: Live) -> None:
    tenant = live.tenant()
    client = tenant.client()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    start, running, complete = lifecycle(first)
    for event in (start, complete, running):  # RUNNING arrives after COMPLETE
        client.emit(event)
    # A second, later run that fails.
    client.emit(run_event(RunState.START, T0 + timedelta(hours=1), second))
    fail = run_event(
        RunState.FAIL,
        T0 + timedelta(hours=1, minutes=5),
        second,
        errorMessage=(error_message_run.ErrorMessageRunFacet(message="division by zero", programmingLanguage="SQL")),
    )
    fail.job = Job("etl", "daily_totals")  # end events often carry fewer job facets than START
    client.emit(fail)
    live.wait_applied(tenant)

    runs = asset(live, tenant, "etl/daily_totals")["attributes"]
    assert runs["runs"][first]["state"] == "COMPLETE"
    assert [h["state"] for h in runs["runs"][first]["history"]] == ["START", "RUNNING", "COMPLETE"]
    assert runs["runs"][second]["state"] == "FAIL" and runs["runs"][second]["error"] == "division by zero"
    assert runs["last_run"]["run_id"] == second and runs["last_run"]["state"] == "FAIL"
    assert runs["openlineage"]["facets"]["jobType"]["integration"] == "SQL"  # kept, not erased


def test_resending_changes_nothing(live: Live) -> None:
    tenant = live.tenant()
    client = tenant.client()
    events = lifecycle(str(uuid.uuid4()))
    for event in events:
        client.emit(event)
    live.wait_applied(tenant)
    before = live.counts(tenant)
    versions = {
        qn: asset(live, tenant, qn)["version"]
        for qn in (f"{NS}/public.orders", f"{NS}/public.daily_totals", "etl/daily_totals")
    }
    assert before["lineage_edges"] == 1 and before["column_lineage"] == 2

    for event in [*events, events[1]]:  # the client retries on 5xx: the same event, again and again
        client.emit(event)
    live.wait_applied(tenant)
    assert live.counts(tenant) == before
    assert {qn: asset(live, tenant, qn)["version"] for qn in versions} == versions


# ---------------------------------------------------------------- dataset and job events


def test_dataset_and_job_events(live: Live) -> None:
    tenant = live.tenant()
    client = tenant.client()
    client.emit(
        DatasetEvent(
            eventTime=T0.isoformat(),
            dataset=StaticDataset(
                "kafka://broker:9092",
                "clicks",
                facets={
                    "schema": schema_dataset.SchemaDatasetFacet(
                        fields=[
                            schema_dataset.SchemaDatasetFacetFields(
                                name="user",
                                type="STRUCT",
                                fields=[schema_dataset.SchemaDatasetFacetFields(name="id", type="STRING")],
                            ),
                        ]
                    ),
                },
            ),
        )
    )
    client.emit(
        JobEvent(
            eventTime=T0.isoformat(),
            job=Job("stream", "sessionize"),
            inputs=[InputDataset("kafka://broker:9092", "clicks")],
            outputs=[OutputDataset("s3://lake", "sessions/daily")],
        )
    )
    live.wait_applied(tenant)

    clicks = asset(live, tenant, "kafka://broker:9092/clicks")
    assert [c["name"] for c in clicks["attributes"]["columns"]] == ["user", "user.id"]
    sessionize = asset(live, tenant, "stream/sessionize")
    assert sessionize["type"] == "job" and "runs" not in sessionize["attributes"]
    sessions = asset(live, tenant, "s3://lake/sessions/daily")
    assert sessions["type"] == "dataset"
    r = marquez(live, tenant, "dataset:s3://lake:sessions/daily")
    assert r.status_code == 200, r.text
    assert {n["id"] for n in r.json()["graph"]} == {
        "dataset:kafka://broker:9092:clicks",
        "job:stream:sessionize",
        "dataset:s3://lake:sessions/daily",
    }


def test_big_compressed_event_is_taken_and_its_facets_bounded(live: Live) -> None:
    tenant = live.tenant()
    # 2 MB of facet: over the 1 MiB wire limit uncompressed, far under it gzipped (as the client sends).
    blob = DatasetFacet().with_additional_properties(blob="lily " * (400 * 1024))
    small = DatasetFacet().with_additional_properties(note="kept as sent")
    tenant.client().emit(
        DatasetEvent(
            eventTime=T0.isoformat(),
            dataset=StaticDataset("s3://lake", "raw/big", facets={"big": blob, "small": small}),
        )
    )
    live.wait_applied(tenant)
    facets = asset(live, tenant, "s3://lake/raw/big")["attributes"]["openlineage"]["facets"]
    assert facets["big"]["_truncated"] is True and facets["big"]["_bytes"] > 2_000_000
    assert facets["small"]["note"] == "kept as sent"


# ---------------------------------------------------------------- batch


def _json(events: list[Any]) -> list[Any]:
    import json

    return [json.loads(Serde.to_json(e)) for e in events]


def test_batch_is_all_or_nothing(live: Live) -> None:
    tenant = live.tenant()
    run_id = str(uuid.uuid4())
    good = _json(lifecycle(run_id))
    bad = [*good[:2], {**good[2], "run": {}}]
    r = live.http.post("/api/v1/lineage/batch", json=bad, headers=tenant.headers("editor"))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["indexes"] == [2] and "[2].run.runId" in {e["field"] for e in r.json()["errors"]}
    live.wait_applied(tenant)
    assert live.counts(tenant)["assets"] == 0

    r = live.http.post(
        "/api/v1/lineage/batch",
        content=gzip.compress(Serde.to_json(lifecycle(run_id)[0]).join(["[", "]"]).encode()),
        headers=tenant.headers("editor", **{"Content-Encoding": "gzip", "Content-Type": "application/json"}),
    )
    assert r.status_code == 201 and r.content == b"", r.text
    r = live.http.post("/api/v1/lineage/batch", json=good, headers=tenant.headers("editor"))
    assert r.status_code == 201 and r.content == b"", r.text
    live.wait_applied(tenant)
    run = asset(live, tenant, "etl/daily_totals")["attributes"]["runs"][run_id]
    assert run["state"] == "COMPLETE"


# ---------------------------------------------------------------- bad input and auth


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"]
    return body


def test_malformed_events_are_refused_whole(live: Live) -> None:
    tenant = live.tenant()
    post = lambda content, **headers: live.http.post(  # noqa: E731
        "/api/v1/lineage", content=content, headers=tenant.headers("editor", **headers)
    )
    good = Serde.to_json(lifecycle(str(uuid.uuid4()))[0])
    import json

    def mutated(change: Any) -> bytes:
        event = json.loads(good)
        change(event)
        return json.dumps(event).encode()

    for change, field in (
        (lambda e: e.pop("eventType"), "eventType"),
        (lambda e: e["run"].pop("runId"), "run.runId"),
        (lambda e: e.pop("job"), "job"),
        (lambda e: e.update(schemaURL="https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/Bogus"), "schemaURL"),
        (lambda e: e.update(eventTime=12), "eventTime"),
        (lambda e: e.update(outputs={"not": "a list"}), "outputs"),
        # Valid alone, refused as a whole: the job may not also be one of its datasets.
        (lambda e: e["inputs"].append({"namespace": "etl", "name": "daily_totals"}), "job"),
    ):
        body = _problem(post(mutated(change)), 422)
        assert field in {e["field"] for e in body["errors"]}, body

    assert _problem(post(b"{not json"), 400)["type"].endswith("/malformed-json")
    assert _problem(post(b"[]"), 422)["errors"][0]["field"] == "body"
    _problem(post(b"x" * (9 * 1024 * 1024)), 413)  # over the 8 MiB limit of one event
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # ~64 KiB that inflate to 64 MiB
    assert len(bomb) < 128 * 1024
    _problem(post(bomb, **{"Content-Encoding": "gzip"}), 413)
    _problem(post(b"\x1f\x8b garbage", **{"Content-Encoding": "gzip"}), 400)
    _problem(post(good.encode(), **{"Content-Encoding": "br"}), 415)
    _problem(post(good.encode(), **{"Content-Type": "text/plain"}), 415)

    live.wait_applied(tenant)
    assert live.counts(tenant)["assets"] == 0  # nothing partial anywhere


def test_authentication_and_roles(live: Live) -> None:
    tenant = live.tenant()
    event = lifecycle(str(uuid.uuid4()))[0]
    body = Serde.to_json(event).encode()
    assert _problem(live.http.post("/api/v1/lineage", content=body), 401)
    bogus = {"Authorization": f"Bearer lily_{tenant.tenant_id}.nokey.nosecret"}
    _problem(live.http.post("/api/v1/lineage", content=body, headers=bogus), 401)
    _problem(live.http.post("/api/v1/lineage", content=body, headers=tenant.headers("viewer")), 403)
    # The client reports refusals as HTTP errors (and does not retry 4xx).
    with pytest.raises(requests.HTTPError) as exc:
        tenant.client("viewer").emit(event)
    assert exc.value.response.status_code == 403
    tenant.client("admin").emit(event)  # admin is above editor
    live.wait_applied(tenant)
    assert asset(live, tenant, "etl/daily_totals")["attributes"]["last_run"]["state"] == "START"


def test_tenants_never_see_each_other(live: Live) -> None:
    acme, globex = live.tenant(), live.tenant()
    for event in lifecycle(str(uuid.uuid4())):
        acme.client().emit(event)
    # globex has a same-named job of its own, with other datasets.
    globex.client().emit(
        JobEvent(
            eventTime=T0.isoformat(),
            job=Job("etl", "daily_totals"),
            inputs=[InputDataset(NS, "public.secret_globex")],
            outputs=[OutputDataset(NS, "public.globex_out")],
        )
    )
    live.wait_applied(acme)
    live.wait_applied(globex)

    for node in (f"dataset:{NS}:public.orders", f"dataset:{NS}:public.daily_totals"):
        _problem(marquez(live, globex, node), 404)
    # Same job name in both tenants: each sees its own job and only its own datasets.
    r = marquez(live, globex, "job:etl:daily_totals")
    assert r.status_code == 200
    assert {n["id"] for n in r.json()["graph"]} == {
        "job:etl:daily_totals",
        f"dataset:{NS}:public.secret_globex",
        f"dataset:{NS}:public.globex_out",
    }
    assert "public.orders" not in r.text
    r = marquez(live, acme, "job:etl:daily_totals")
    assert {n["id"] for n in r.json()["graph"]} == {
        "job:etl:daily_totals",
        f"dataset:{NS}:public.orders",
        f"dataset:{NS}:public.daily_totals",
    }
    assert "globex" not in r.text
    search = live.http.get("/lily/v1/metadata/search", params={"q": "orders"}, headers=globex.headers())
    assert search.status_code == 200 and search.json()["items"] == []
    orders = asset(live, acme, f"{NS}/public.orders")
    assert live.http.get(f"/lily/v1/metadata/{orders['asset_id']}", headers=globex.headers()).status_code == 404
