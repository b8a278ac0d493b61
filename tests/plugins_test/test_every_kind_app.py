"""The test distribution's plugins at work inside a running app: the connector's route is mounted and
appends a custom event kind, the pipeline applies it through the test handler, and the test hook sees
the batch with the worker's transaction."""

from __future__ import annotations

import uuid
from types import ModuleType
from typing import Any

import pytest

from lily.config import Settings
from lily.domain.events import NewEvent
from tests.conftest import TEST_PARTITIONS
from tests.pipeline.support import settled, subjects_in_partition, until


@pytest.fixture
def settings(settings: Settings, every_kind: ModuleType) -> Settings:
    return settings  # the distribution must be on the path before the app loads its plugins


async def post_note(client: Any, headers: dict[str, str], subject: str, text: str) -> Any:
    # The connector's routes live at the paths it chose, outside /lily/v1.
    return await client.post(
        "http://lily.test/test-inbox/notes", json={"subject": subject, "text": text}, headers=headers
    )


async def test_a_custom_event_kind_goes_through_the_log_and_its_handler(
    client: Any, tenant: Any, every_kind: ModuleType
) -> None:
    r = await post_note(client, tenant.headers("editor"), "note://one", "hello")
    assert r.status_code == 202, r.text
    event_id = r.json()["event_id"]
    state = await settled(client, tenant.headers("viewer"), event_id)
    assert state["state"] == "applied", state
    assert state["result"]["text"] == "HELLO"
    # It ran in the tenant's transaction: the RLS setting was the event's tenant.
    assert state["result"]["tenant_setting"] == tenant.tenant_id


async def test_the_hook_sees_the_batch_and_the_transaction_before_and_after_apply(
    client: Any, tenant: Any, every_kind: ModuleType
) -> None:
    r = await post_note(client, tenant.headers("editor"), "note://two", "batch")
    event_id = r.json()["event_id"]
    state = await settled(client, tenant.headers("viewer"), event_id)

    async def both_phases() -> list[dict[str, Any]] | None:
        mine = [s for s in every_kind.SEEN if event_id in s["event_ids"]]
        return mine if {s["phase"] for s in mine} == {"pre", "post"} else None

    seen = await until(both_phases, what="the probe hook's pre and post calls")
    pre = next(s for s in seen if s["phase"] == "pre")
    post = next(s for s in seen if s["phase"] == "post")
    assert pre["outcomes"] == [None] and post["outcomes"] == ["applied"]
    assert pre["tenant_id"] == post["tenant_id"] == pre["tenant_setting"] == tenant.tenant_id
    # One transaction from pre-hook to post-hook, the very one the handler applied the event in.
    assert pre["txid"] == post["txid"] == state["result"]["txid"]


async def test_the_route_refuses_a_bad_body_as_a_problem(client: Any, tenant: Any) -> None:
    r = await post_note(client, tenant.headers("editor"), "note://bad", "")
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "text"


async def test_the_handler_rejects_what_it_cannot_apply(app: Any, client: Any, tenant: Any) -> None:
    # Appended straight to the log (as a replay or another producer could): the handler's validate()
    # is the pipeline's own check, and its refusal names the field.
    event = NewEvent(tenant.tenant_id, "note://raw", "test.note", {"text": 42}, "key:test")
    (accepted,) = await app.state.runtime.writer.append_many(tenant.tenant_id, [event])
    state = await settled(client, tenant.headers("viewer"), str(accepted.event_id))
    assert state["state"] == "failed", state
    assert "text" in state["error"]


async def test_the_connector_route_authenticates_and_authorizes(client: Any, tenant: Any) -> None:
    assert (await post_note(client, {}, "note://x", "no token")).status_code == 401
    assert (await post_note(client, tenant.headers("viewer"), "note://x", "viewer")).status_code == 403
    bad = {"Authorization": "Bearer lily_nobody.key.secret"}
    assert (await post_note(client, bad, "note://x", "forged")).status_code == 401


async def test_another_tenant_never_sees_the_connectors_events(client: Any, tenant: Any, other_tenant: Any) -> None:
    r = await post_note(client, tenant.headers("editor"), "note://private", "mine")
    event_id = r.json()["event_id"]
    assert (await settled(client, tenant.headers("viewer"), event_id))["state"] == "applied"
    assert (await client.get(f"/events/{event_id}", headers=other_tenant.headers("admin"))).status_code == 404


async def test_the_connector_route_is_in_the_openapi_document(client: Any) -> None:
    doc = (await client.get("http://lily.test/openapi.json")).json()
    operation = doc["paths"]["/test-inbox/notes"]["post"]
    assert {"202", "401", "403", "422"} <= set(operation["responses"])
    assert "/api/v1/lineage" in doc["paths"]  # OpenLineage, mounted the same way


async def append_notes(app: Any, tenant: Any, texts: list[str]) -> list[str]:
    """Notes of distinct subjects in one partition, appended in one transaction: one batch for the worker."""
    subjects = subjects_in_partition(tenant.tenant_id, 3, TEST_PARTITIONS, len(texts), "note://batch-")
    events = [
        NewEvent(tenant.tenant_id, s, "test.note", {"text": t}, "key:test")
        for s, t in zip(subjects, texts, strict=True)
    ]
    accepted = await app.state.runtime.writer.append_many(tenant.tenant_id, events)
    return [str(a.event_id) for a in accepted]


async def test_a_hook_rejecting_one_event_leaves_the_others_applied(
    app: Any, client: Any, tenant: Any, every_kind: ModuleType
) -> None:
    refused, fine = await append_notes(app, tenant, [every_kind.REFUSE_ONE, "fine"])
    state = await settled(client, tenant.headers("viewer"), refused)
    assert state["state"] == "failed" and "test_probe refuses this note" in state["error"]
    assert (await settled(client, tenant.headers("viewer"), fine))["state"] == "applied"


async def test_a_hook_raising_invalid_rejects_every_event_it_was_shown(
    app: Any, client: Any, tenant: Any, every_kind: ModuleType
) -> None:
    ids = await append_notes(app, tenant, [every_kind.REFUSE_BATCH, "innocent"])
    states = [await settled(client, tenant.headers("viewer"), event_id) for event_id in ids]
    shown = next(s["event_ids"] for s in every_kind.SEEN if s["phase"] == "pre" and ids[0] in s["event_ids"])
    assert sorted(shown) == sorted(ids)  # the worker gave the hook both notes in one batch
    for state in states:
        assert state["state"] == "failed" and "test_probe refuses this batch" in state["error"], state


async def test_connector_paths_get_the_body_limit_they_ask_for(client: Any, tenant: Any, settings: Settings) -> None:
    body = b"[" + b" " * (settings.max_asset_body_bytes + 1024) + b"]"
    headers = tenant.headers("editor", **{"Content-Type": "application/json"})
    # OpenLineage declares large_bodies: past the single-write limit, its own parser answers (an empty batch).
    r = await client.post("http://lily.test/api/v1/lineage/batch", content=body, headers=headers)
    assert r.status_code == 422, r.text
    # The test connector does not: the middleware refuses the same body.
    r = await client.post("http://lily.test/test-inbox/notes", content=body, headers=headers)
    assert r.status_code == 413, r.text


async def test_a_connector_path_template_raises_the_limit_of_that_route_only(
    client: Any, tenant: Any, settings: Settings
) -> None:
    body = b"{" + b" " * (settings.max_asset_body_bytes + 1024) + b"}"
    headers = tenant.headers("admin", **{"Content-Type": "application/json"})
    # dbt's large_bodies names its artifacts route by its template; the registry's other routes under
    # /lily/v1/connectors/ keep the single-write limit.
    r = await client.put(f"/connectors/{uuid.uuid4()}", content=body, headers=headers)
    assert r.status_code == 413, r.text
    r = await client.post(f"/connectors/{tenant.tenant_id}/{uuid.uuid4()}/artifacts", content=body, headers=headers)
    assert r.status_code != 413, r.text  # read whole, then refused for what it is (no such connector)


async def test_connector_routes_refuse_unknown_query_parameters(
    client: Any, tenant: Any, every_kind: ModuleType
) -> None:
    r = await client.post(
        "http://lily.test/test-inbox/notes",
        params={"dry_run": "1"},
        json={"subject": "note://q", "text": "hello"},
        headers=tenant.headers("editor"),
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "dry_run", "message": "unknown query parameter", "in": "query"}]
    r = await client.post(
        "http://lily.test/api/v1/lineage", params={"x": "1"}, content=b"{}", headers=tenant.headers("editor")
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "x", r.text
