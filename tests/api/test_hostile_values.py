"""Values PostgreSQL cannot store are refused at the API with 422 naming the field, never a 500, in
single and bulk writes alike, and nothing is stored (lily.domain.storable holds the rules).

Integers beyond 64 bits are refused, not stored: orjson (the API's and the store's JSON) cannot dump
them and reads them back as floats, so they could not be given back exactly.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
import pytest

from .helpers import assert_problem, create, fields_of, fingerprint

JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}
OL = "http://lily.test/api/v1/lineage"
BIG = 2**64 + 1
ZEROS = b"0" * 30
EMOJI_NAME = "pg://wh/" + "\U0001f600" * 1000  # 1,008 characters, over 4,000 bytes


def asset_json(**attributes: Any) -> bytes:
    return orjson.dumps({"qualified_name": "pg://wh/s.t", "type": "table", "attributes": attributes}).decode().encode()


# Raw bodies, because orjson cannot even write these values: (body, field the problem names).
UNSTORABLE_ASSETS: list[tuple[bytes, str]] = [
    (b'{"qualified_name": "pg://wh/s.t", "type": "table", "attributes": {"n": 18446744073709551617}}', "attributes.n"),
    (b'{"qualified_name": "pg://wh/s.t", "type": "table", "attributes": {"n": -9223372036854775809}}', "attributes.n"),
    (
        b'{"qualified_name": "pg://wh/s.t", "type": "table", "attributes": {"a": [{"b": 1' + ZEROS + b"}]}}",
        "attributes.a[0].b",
    ),
    (rb'{"qualified_name": "pg://wh/s.t", "type": "table", "attributes": {"s": "x\ud800y"}}', "attributes.s"),
    (rb'{"qualified_name": "pg://wh/s.t", "type": "table", "attributes": {"s": "\udc00"}}', "attributes.s"),
    (rb'{"qualified_name": "pg://wh/s.t", "type": "table", "name": "a\ud800"}', "name"),
    (rb'{"qualified_name": "pg://wh/s.t", "type": "table", "tags": ["\ud800"]}', "tags[0]"),
    (rb'{"qualified_name": "pg://wh/\ud800", "type": "table"}', "qualified_name"),
    (orjson.dumps({"qualified_name": EMOJI_NAME, "type": "table"}), "qualified_name"),
]


@pytest.mark.parametrize(("body", "field"), UNSTORABLE_ASSETS)
async def test_single_post_refuses_what_cannot_be_stored(client, app, tenant, body, field):
    h = {**tenant.headers("editor"), **JSON}
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    problem = assert_problem(await client.post("/metadata", content=body, headers=h), 422, "validation")
    assert fields_of(problem) == {field}, problem
    # The same with an Idempotency-Key: the key is not claimed by a refused request either.
    r = await client.post("/metadata", content=body, headers={**h, "Idempotency-Key": "k-1"})
    assert fields_of(assert_problem(r, 422)) == {field}
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


@pytest.mark.parametrize(("body", "field"), [c for c in UNSTORABLE_ASSETS if "qualified_name" not in c[1]])
async def test_put_refuses_what_cannot_be_stored(client, app, tenant, body, field):
    h = {**tenant.headers("editor"), **JSON}
    asset = await create(client, h, "pg://wh/s.t")
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    # PUT takes the mutable fields only: drop qualified_name from the raw body by rewriting its start.
    raw = body.replace(b'"qualified_name": "pg://wh/s.t", ', b"")
    r = await client.put(f"/metadata/{asset['asset_id']}", content=raw, headers=h)
    assert fields_of(assert_problem(r, 422, "validation")) == {field}
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


async def finished(client: Any, tenant: Any, job_id: str) -> dict[str, Any]:
    r = await client.get(f"/metadata/bulk/status/{job_id}", params={"wait": 20}, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["state"] not in ("queued", "running"), body
    return body


@pytest.mark.parametrize("ndjson", [False, True], ids=["json-array", "ndjson"])
async def test_bulk_refuses_the_same_items_naming_the_field(client, app, tenant, ndjson):
    """Each unstorable item is refused with its index and field; the valid ones are applied."""
    good = b'{"qualified_name": "pg://wh/s.good", "type": "table"}'
    items = [body for body, _ in UNSTORABLE_ASSETS] + [good]
    body = b"\n".join(items) if ndjson else b"[" + b",".join(items) + b"]"
    h = {**tenant.headers("editor"), **(NDJSON if ndjson else JSON), "Idempotency-Key": f"bulk-{ndjson}"}
    r = await client.post("/metadata/bulk", content=body, headers=h)
    assert r.status_code == 202, r.text
    assert r.json()["rejected"] == len(UNSTORABLE_ASSETS)
    status = await finished(client, tenant, r.json()["job_id"])
    assert status["applied"] == 1 and status["rejected"] == len(UNSTORABLE_ASSETS), status
    errors = {e["index"]: e["error"] for e in status["errors"]}
    assert set(errors) == set(range(len(UNSTORABLE_ASSETS)))
    for i, (_, field) in enumerate(UNSTORABLE_ASSETS):
        # NDJSON lines are parsed by pydantic, which calls a lone surrogate malformed JSON: refused too.
        assert field.split("[")[0].split(".")[0] in errors[i] or "malformed JSON" in errors[i], (i, errors[i])
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT qualified_name FROM assets")
        assert [row["qualified_name"] for row in await cur.fetchall()] == ["pg://wh/s.good"]


async def test_an_over_long_idempotency_key_is_422(client, app, tenant):
    h = {**tenant.headers("editor"), **JSON}
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    for key in ("k" * 4000, "caf\u00e9".encode(), "a\tb"):
        for method, url, body in (
            ("POST", "/metadata", asset_json()),
            ("POST", "/metadata/bulk", b"[" + asset_json() + b"]"),
        ):
            r = await client.request(method, url, content=body, headers={**h, "Idempotency-Key": key})
            assert fields_of(assert_problem(r, 422, "validation")) == {"Idempotency-Key"}, (key, r.text)
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


def cursor_of(position: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


async def test_forged_cursors_are_422_naming_them(client, tenant):
    h = tenant.headers("admin")
    asset = await create(client, h, "pg://wh/s.t")
    forged = [
        cursor_of({"0": 1}),
        cursor_of([1, "\u0000"]),
        cursor_of([1, "not-a-uuid"]),
        cursor_of("x"),
        "!!",
        "a" * 600,
    ]
    for url, field in [
        ("/metadata/search", "cursor"),
        (f"/metadata/audit/{asset['asset_id']}", "cursor"),
        (f"/metadata/{asset['asset_id']}", "history_cursor"),
        ("/admin/dead-letters", "cursor"),
    ]:
        for cursor in forged:
            r = await client.get(url, params={field: cursor}, headers=h)
            assert fields_of(assert_problem(r, 422, "validation")) == {field}, (url, cursor, r.text)


async def test_nul_in_filters_and_queries_is_422(client, app, tenant):
    h = tenant.headers("admin")
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    for url, params, field in [
        ("/admin/dead-letters", {"subject": "a\x00b"}, "subject"),
        ("/admin/dead-letters", {"kind": "\x00"}, "kind"),
        ("/metadata/search", {"q": "a\x00"}, "q"),
        ("/metadata/search", {"tag": "a\x00"}, "tag[0]"),
        ("http://lily.test/api/v1/lineage", {"nodeId": "dataset:ns:a\x00b"}, "nodeId"),
    ]:
        r = await client.get(url, params=params, headers=h)
        assert fields_of(assert_problem(r, 422, "validation")) == {field}, (url, r.text)
    for raw, field in [
        (rb'{"subject": "a\u0000b"}', "subject"),
        (rb'{"kind": "a\ud800"}', "kind"),
        (b'{"subjct": "pg://wh/s.t"}', "subjct"),  # a typo must not mean "replay everything"
        (b'{"until": 0}', "until"),
    ]:
        r = await client.post("/admin/dead-letters/replay", content=raw, headers={**h, **JSON})
        assert fields_of(assert_problem(r, 422, "validation")) == {field}, (raw, r.text)
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


async def test_lineage_column_names_and_transformations_refuse_nul(client, app, tenant):
    h = tenant.headers("editor")
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    up, down = {"qualified_name": "pg://wh/s.up"}, {"qualified_name": "pg://wh/s.down"}
    for mapping, field in [
        ({"column": "a\x00", "upstreams": [{"asset": up, "column": "b"}]}, "column_mappings[0].column"),
        ({"column": "a", "upstreams": [{"asset": up, "column": "\x00"}]}, "column_mappings[0].upstreams[0].column"),
        (
            {"column": "a", "upstreams": [{"asset": up, "column": "b"}], "transformation": "x\x00"},
            "column_mappings[0].transformation",
        ),
        ({"column": "\U0001f600" * 300, "upstreams": [{"asset": up, "column": "b"}]}, "column_mappings[0].column"),
    ]:
        body = {"upstreams": [up], "downstreams": [down], "column_mappings": [mapping]}
        r = await client.post("/metadata/lineage", json=body, headers=h)
        assert fields_of(assert_problem(r, 422, "validation")) == {field}, (mapping, r.text)
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


def run_event(**job: Any) -> dict[str, Any]:
    return {
        "eventType": "START",
        "eventTime": "2026-01-01T12:00:00+00:00",
        "producer": "https://example.com/producer",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "etl", "name": "daily", **job},
        "outputs": [{"namespace": "pg://wh", "name": "s.out"}],
    }


OL_CASES: list[tuple[bytes, str]] = [
    (orjson.dumps(run_event(name="da\x00ily")), "job.name"),
    (orjson.dumps(run_event(namespace="e\x00tl")), "job.namespace"),
    (orjson.dumps(run_event(facets={"custom": {"v": "a\x00"}})), "job.facets.custom.v"),
    (orjson.dumps(run_event(name="\U0001f600" * 900)), "job"),
    (orjson.dumps(run_event(facets={"custom": {"v": 12}})).replace(b'"v":12', b'"v":1' + ZEROS), "job.facets.custom.v"),
]


@pytest.mark.parametrize(
    ("body", "field"), OL_CASES, ids=["nul-in-name", "nul-in-namespace", "nul-in-facet", "name-too-long", "huge-number"]
)
async def test_openlineage_refuses_what_cannot_be_stored(client, app, tenant, body, field):
    h = {**tenant.headers("editor"), **JSON}
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    problem = assert_problem(await client.post(OL, content=body, headers=h), 422, "validation")
    assert fields_of(problem) == {field}, problem
    good = orjson.dumps(run_event())
    r = await client.post(f"{OL}/batch", content=b"[" + good + b"," + body + b"]", headers=h)
    assert fields_of(assert_problem(r, 422, "validation")) == {f"[1].{field}"}, r.text
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before
