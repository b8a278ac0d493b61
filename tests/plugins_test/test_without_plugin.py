"""Core behaviour never depends on an optional plugin: an event of a kind no loaded plugin handles is
refused by the pipeline (it does not stall it), and the rest of the tenant's writes go on."""

from __future__ import annotations

from typing import Any

from lily.domain.events import NewEvent
from tests.pipeline.support import settled


async def test_an_event_kind_without_a_handler_fails_alone(app: Any, client: Any, tenant: Any) -> None:
    orphan = NewEvent(tenant.tenant_id, "note://orphan", "test.note", {"text": "nobody handles me"}, "key:test")
    (accepted,) = await app.state.runtime.writer.append_many(tenant.tenant_id, [orphan])
    state = await settled(client, tenant.headers("viewer"), str(accepted.event_id))
    assert state["state"] == "failed"
    assert "unknown event kind 'test.note'" in state["error"]
    r = await client.post(
        "/metadata", json={"qualified_name": "pg://db/s.after", "type": "table"}, headers=tenant.headers("editor")
    )
    assert r.status_code in (200, 201), r.text


async def test_the_test_connector_is_not_mounted_unless_installed(client: Any, tenant: Any) -> None:
    r = await client.post(
        "http://lily.test/test-inbox/notes", json={"subject": "a", "text": "b"}, headers=tenant.headers()
    )
    assert r.status_code == 404
