"""Bad input: every rejection is problem+json with the right status, names the field, and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from lily import admin
from lily.api.app import create_app

from .helpers import assert_problem, create, fields_of, fingerprint

QN = "pg://wh/s.orders"
JSON = {"content-type": "application/json"}


async def test_malformed_json_is_400(client, app, tenant):
    h = {**tenant.headers("editor"), **JSON}
    asset = await create(client, h, QN)
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    for body in (
        b'{"qualified_name": "x", "type": ',
        b"{'single': 'quotes'}",
        b'{"a": 1}}',
        b"nul\x00l",
        b'{"qualified_name": "x", "type": "table",}',
        b"\xff\xfe{}",
    ):
        for method, url in (("POST", "/metadata"), ("PUT", f"/metadata/{asset['asset_id']}")):
            r = await client.request(method, url, content=body, headers=h)
            problem = assert_problem(r, 400, "malformed-json")
            assert problem["title"] == "Malformed JSON"
    # JSON nested too deeply for the parser is a bad request too.
    r = await client.post("/metadata", content=b"[" * 100_000, headers=h)
    assert assert_problem(r, 400, "bad-request")["title"] == "Bad request"
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


async def test_wrong_types_and_missing_fields_are_422_naming_the_field(client, app, tenant):
    h = tenant.headers("editor")
    asset = await create(client, h, QN)
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    cases: list[tuple[Any, set[str]]] = [
        ({"type": "table"}, {"qualified_name"}),
        ({"qualified_name": "pg://x/y"}, {"type"}),
        ({}, {"qualified_name", "type"}),
        ({"qualified_name": 5, "type": "table"}, {"qualified_name"}),
        ({"qualified_name": "", "type": "table"}, {"qualified_name"}),
        ({"qualified_name": "   ", "type": "table"}, {"qualified_name"}),
        ({"qualified_name": "q" * 1025, "type": "table"}, {"qualified_name"}),
        ({"qualified_name": "pg://x/y", "type": ["table"]}, {"type"}),
        ({"qualified_name": "pg://x/y", "type": "not a type!"}, {"type"}),
        ({"qualified_name": "pg://x/y", "type": "table", "tags": "pii"}, {"tags"}),
        ({"qualified_name": "pg://x/y", "type": "table", "tags": ["ok", 7]}, {"tags[1]"}),
        ({"qualified_name": "pg://x/y", "type": "table", "owners": [""]}, {"owners[0]"}),
        ({"qualified_name": "pg://x/y", "type": "table", "attributes": [1, 2]}, {"attributes"}),
        ({"qualified_name": "pg://x/y", "type": "table", "description": {"a": 1}}, {"description"}),
        ({"qualified_name": "pg://x/y", "type": "table", "name": ""}, {"name"}),
        ({"qualified_name": "pg://x/y", "type": "table", "version": 3}, {"version"}),  # not client-settable
        ({"qualified_name": "pg://x/y", "type": "table", "asset_id": str(uuid.uuid4())}, {"asset_id"}),
        ([{"qualified_name": "pg://x/y", "type": "table"}], {"body"}),
        ("a string", {"body"}),
        (None, {"body"}),
    ]
    for body, fields in cases:
        r = await client.post("/metadata", content=orjson.dumps(body), headers={**h, **JSON})
        problem = assert_problem(r, 422, "validation")
        assert fields_of(problem) == fields, (body, problem)
        assert all(e["message"] for e in problem["errors"])
    url = f"/metadata/{asset['asset_id']}"
    for body, fields in [
        ({"tags": ["x"]}, {"type"}),
        ({"type": "table", "qualified_name": "pg://renamed"}, {"qualified_name"}),
        ({"type": "table", "owners": "ann"}, {"owners"}),
    ]:
        problem = assert_problem(await client.put(url, json=body, headers=h), 422, "validation")
        assert fields_of(problem) == fields, (body, problem)
    # Valid JSON that PostgreSQL cannot store, or that is not really JSON, is refused up front (not a 500).
    deep = b'{"qualified_name": "pg://x/y", "type": "table", "attributes": ' + b'{"a": ' * 40 + b"1" + b"}" * 41
    for raw, fields in [
        (rb'{"qualified_name": "pg://x/\u0000", "type": "table"}', {"qualified_name"}),
        (rb'{"qualified_name": "pg://x/y", "type": "table", "description": "a\u0000b"}', {"description"}),
        (rb'{"qualified_name": "pg://x/y", "type": "table", "tags": ["a\u0000b"]}', {"tags[0]"}),
        (rb'{"qualified_name": "pg://x/y", "type": "table", "attributes": {"k\u0000": 1}}', {"attributes"}),
        (rb'{"qualified_name": "pg://x/y", "type": "table", "attributes": {"k": ["\u0000"]}}', {"attributes.k[0]"}),
        (b'{"qualified_name": "pg://x/y", "type": "table", "attributes": {"n": NaN}}', {"attributes.n"}),
        (b'{"qualified_name": "pg://x/y", "type": "table", "attributes": {"n": -Infinity}}', {"attributes.n"}),
        (b'{"qualified_name": "pg://x/y", "type": "table", "attributes": {"n": 1e999}}', {"attributes.n"}),
        (deep, {"attributes." + ".".join(["a"] * 32)}),
    ]:
        problem = assert_problem(await client.post("/metadata", content=raw, headers={**h, **JSON}), 422)
        assert fields_of(problem) == fields, (raw, problem)
    r = await client.post("/metadata", content=b"", headers={**h, **JSON})
    assert fields_of(assert_problem(r, 422, "validation")) == {"body"}
    # A body that is JSON but not declared as JSON is not an asset either.
    r = await client.post(
        "/metadata",
        content=orjson.dumps({"qualified_name": "pg://x/y", "type": "table"}),
        headers={**h, "content-type": "text/plain"},
    )
    assert_problem(r, 422, "validation")
    # Path parameters are validated too.
    for method in ("GET", "PUT", "DELETE"):
        r = await client.request(method, "/metadata/not-a-uuid", headers=h, json={"type": "table"})
        assert fields_of(assert_problem(r, 422, "validation")) == {"asset_id"}
    r = await client.get("/metadata/audit/12345", headers=h)
    assert fields_of(assert_problem(r, 422, "validation")) == {"asset_id"}
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


async def test_unknown_asset_ids_are_404(client, app, tenant):
    h = tenant.headers("editor")
    await create(client, h, QN)
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    unknown = uuid.uuid4()
    for method, path in [
        ("GET", f"/metadata/{unknown}"),
        ("GET", f"/metadata/{unknown}?include_deleted=true"),
        ("PUT", f"/metadata/{unknown}"),
        ("DELETE", f"/metadata/{unknown}"),
        ("GET", f"/metadata/audit/{unknown}"),
        ("GET", f"/events/{unknown}"),
    ]:
        r = await client.request(method, path, headers=h, json={"type": "table"} if method == "PUT" else None)
        problem = assert_problem(r, 404, "not-found")
        assert problem["title"] == "Not found"
    assert_problem(await client.get("/no/such/route", headers=h), 404)
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


async def test_bodies_over_the_limit_are_413(client, app, tenant):
    h = tenant.headers("editor")
    asset = await create(client, h, QN)
    limit = app.state.runtime.settings.max_asset_body_bytes
    assert limit == 1024 * 1024  # the default
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    big = orjson.dumps({"qualified_name": "pg://x/big", "type": "table", "description": "d" * limit})
    assert len(big) > limit

    async def streamed(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
        for i in range(0, len(data), chunk):
            yield data[i : i + chunk]

    for method, url in (("POST", "/metadata"), ("PUT", f"/metadata/{asset['asset_id']}")):
        # Declared with Content-Length: refused before the body is read.
        r = await client.request(method, url, content=big, headers={**h, **JSON})
        assert "content-length" in {k.lower() for k in r.request.headers}
        problem = assert_problem(r, 413, "payload-too-large")
        assert problem["limit"] == limit
        # Streamed (chunked, no Content-Length): refused once the limit is passed.
        r = await client.request(method, url, content=streamed(big), headers={**h, **JSON})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert_problem(r, 413, "payload-too-large")
    # Just under the limit passes the size check and reaches validation (the description is too long).
    ok = orjson.dumps({"qualified_name": "pg://x/ok", "type": "table", "description": "d" * (limit - 200)})
    assert len(ok) <= limit
    assert_problem(await client.post("/metadata", content=ok, headers={**h, **JSON}), 422, "validation")
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before
    r = await client.post(
        "/metadata",
        content=orjson.dumps({"qualified_name": "pg://x/ok", "type": "table", "description": "d" * 60000}),
        headers={**h, **JSON},
    )
    assert r.status_code == 201
    r = await client.post(
        "/metadata",
        content=streamed(orjson.dumps({"qualified_name": "pg://x/ok2", "type": "table"}), 5),
        headers={**h, **JSON},
    )
    assert r.status_code == 201, r.text


async def test_viewer_cannot_write(client, app, tenant):
    asset = await create(client, tenant.headers("editor"), QN)
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    v = tenant.headers("viewer")
    url = f"/metadata/{asset['asset_id']}"
    for r in [
        await client.post("/metadata", json={"qualified_name": "pg://x/y", "type": "table"}, headers=v),
        await client.post("/metadata", json={"qualified_name": QN, "type": "view"}, headers=v),
        await client.put(url, json={"type": "view"}, headers=v),
        await client.delete(url, headers=v),
        await client.get("/system/metrics", headers=tenant.headers("editor")),
    ]:
        problem = assert_problem(r, 403, "forbidden")
        assert "role" in problem["detail"]
    # Bad input from a viewer is still a 403: roles are checked whatever the body holds.
    assert_problem(await client.post("/metadata", json={"nope": 1}, headers=v), 403)
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before
    assert (await client.get(url, headers=v)).json()["version"] == 1


async def test_unauthenticated_or_odd_requests_change_nothing(client, app, tenant):
    asset = await create(client, tenant.headers("editor"), QN)
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    url = f"/metadata/{asset['asset_id']}"
    for headers in ({}, {"Authorization": "Bearer garbage"}, {"Authorization": "Bearer lily_acme.x.y"}):
        for method, path in (
            ("POST", "/metadata"),
            ("PUT", url),
            ("DELETE", url),
            ("GET", url),
            ("GET", f"/metadata/audit/{asset['asset_id']}"),
            ("GET", "/metadata/search"),
        ):
            r = await client.request(
                method,
                path,
                headers=headers,
                json={"qualified_name": QN, "type": "view"} if method in ("POST", "PUT") else None,
            )
            assert_problem(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
    # Authenticated, but the request itself is wrong: a method the route lacks, an overlong request id.
    assert_problem(await client.patch("/metadata/search", headers=tenant.headers("editor")), 405)
    r = await client.post(
        "/metadata",
        json={"qualified_name": QN, "type": "view"},
        headers={**tenant.headers("editor"), "X-Request-ID": "r" * 1000},
    )
    assert fields_of(assert_problem(r, 422, "validation")) == {"X-Request-ID"}
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


async def test_the_body_limit_is_configurable(settings, database_url, make_tenant):
    small = create_app(settings.model_copy(update={"max_asset_body_bytes": 300}), database_url, run_workers=False)
    async with small.router.lifespan_context(small):
        await admin.create_tenant(small.state.runtime.db, "tiny")
        key = await admin.create_api_key(small.state.runtime.db, "tiny", "k", "editor")
        transport = httpx.ASGITransport(app=small)
        async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as c:
            body = {"qualified_name": "pg://x/y", "type": "table", "description": "d" * 300}
            r = await c.post("/metadata", json=body, headers={"Authorization": f"Bearer {key}"})
            assert assert_problem(r, 413)["limit"] == 300
