"""``/admin/dead-letters``: list (paginated, filtered, per tenant, admins only), replay one, replay all
matching a filter, discard — and the replay policy: a replay is a new event, refused while a newer
event of the same subject exists unless forced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest

from lily.config import Settings
from tests.pipeline.support import install_test_hooks, settled

from .helpers import assert_problem

ASYNC = {"Prefer": "respond-async"}
BASE = "/admin/dead-letters"


@pytest.fixture
def test_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from install_test_hooks(monkeypatch)


@pytest.fixture
def settings(settings: Settings, test_hooks: ModuleType) -> Settings:
    return settings  # the plugin must be on the path before the app loads its hooks


async def dead_letter(client: Any, tenant: Any, hooks: ModuleType, name: str, **attributes: Any) -> str:
    """Write to a broken subject and wait until the event is dead-lettered; its event id."""
    hooks.BROKEN_SUBJECTS.add(name)
    r = await client.post(
        "/metadata",
        json={"qualified_name": name, "type": "table", "attributes": attributes},
        headers=tenant.headers("editor", **ASYNC),
    )
    assert r.status_code == 202, r.text
    state = await settled(client, tenant.headers("viewer"), r.json()["event_id"])
    assert state["state"] == "dead_lettered", state
    return str(state["event_id"])


async def test_list_is_paginated_filtered_and_shows_the_error(client, tenant, test_hooks):
    ids = [await dead_letter(client, tenant, test_hooks, f"pg://db/s.dl{i}", i=i) for i in range(3)]
    admin = tenant.headers("admin")
    r = await client.get(BASE, headers=admin, params={"limit": 2})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [x["event_id"] for x in page["items"]] == ids[:2] and page["next_cursor"]
    item = page["items"][0]
    assert item["subject"] == "pg://db/s.dl0" and item["kind"] == "asset.upsert" and item["state"] == "open"
    assert item["attempts"] == 3 and "InjectedFault" in item["error"]
    assert item["payload"]["attributes"] == {"i": 0}
    rest = (await client.get(BASE, headers=admin, params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [x["event_id"] for x in rest["items"]] == ids[2:] and rest["next_cursor"] is None

    by_subject = (await client.get(BASE, headers=admin, params={"subject": "pg://db/s.dl1"})).json()
    assert [x["event_id"] for x in by_subject["items"]] == [ids[1]]
    assert (await client.get(BASE, headers=admin, params={"kind": "asset.delete"})).json()["items"] == []
    later = datetime.now(UTC).isoformat()
    assert (await client.get(BASE, headers=admin, params={"since": later})).json()["items"] == []
    one = await client.get(f"{BASE}/{ids[0]}", headers=admin)
    assert one.status_code == 200 and one.json()["event_id"] == ids[0]
    assert_problem(await client.get(BASE, headers=admin, params={"cursor": "garbage"}), 422)


async def test_only_admins_of_the_tenant_see_and_act(client, tenant, other_tenant, test_hooks):
    event_id = await dead_letter(client, tenant, test_hooks, "pg://db/s.private")
    for role in ("steward", "editor", "viewer"):
        h = tenant.headers(role)
        assert_problem(await client.get(BASE, headers=h), 403, "forbidden")
        assert_problem(await client.post(f"{BASE}/{event_id}/replay", headers=h), 403)
        assert_problem(await client.post(f"{BASE}/replay", json={}, headers=h), 403)
        assert_problem(await client.delete(f"{BASE}/{event_id}", headers=h), 403)
    assert_problem(await client.get(BASE), 401)
    theirs = other_tenant.headers("admin")
    assert (await client.get(BASE, headers=theirs)).json() == {"items": [], "next_cursor": None}
    assert_problem(await client.get(f"{BASE}/{event_id}", headers=theirs), 404)
    assert_problem(await client.post(f"{BASE}/{event_id}/replay", headers=theirs), 404)
    assert_problem(await client.delete(f"{BASE}/{event_id}", headers=theirs), 404)
    assert (await client.post(f"{BASE}/replay", json={}, headers=theirs)).json() == {"replayed": [], "skipped": []}
    # Still open for its own tenant.
    assert (await client.get(f"{BASE}/{event_id}", headers=tenant.headers("admin"))).json()["state"] == "open"


async def test_replay_appends_a_new_event_that_is_applied(client, tenant, test_hooks):
    event_id = await dead_letter(client, tenant, test_hooks, "pg://db/s.replay", n=1)
    test_hooks.BROKEN_SUBJECTS.clear()  # the outage is over
    r = await client.post(f"{BASE}/{event_id}/replay", headers=tenant.headers("admin"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["event_id"] == event_id and body["replay_event_id"] != event_id
    assert r.headers["location"] == body["status_url"]
    replay = await settled(client, tenant.headers("viewer"), body["replay_event_id"])
    assert replay["state"] == "applied" and replay["replay_of"] == event_id
    assert replay["result"]["version"] == 1
    asset = (await client.get(f"/metadata/{replay['result']['asset_id']}", headers=tenant.headers("viewer"))).json()
    assert asset["attributes"]["n"] == 1
    original = await settled(client, tenant.headers("viewer"), event_id)
    assert original["state"] == "dead_lettered"  # the log is history: the dead event stays dead
    assert original["dead_letter"]["state"] == "replayed"
    assert original["dead_letter"]["replayed_as"] == body["replay_event_id"]
    admin = tenant.headers("admin")
    assert (await client.get(BASE, headers=admin)).json()["items"] == []
    replayed = (await client.get(BASE, headers=admin, params={"state": "replayed"})).json()["items"]
    assert [x["replayed_as"] for x in replayed] == [body["replay_event_id"]]
    assert replayed[0]["resolved_by"].startswith("key:")
    assert_problem(await client.post(f"{BASE}/{event_id}/replay", headers=admin), 409)  # once only
    assert_problem(await client.post(f"{BASE}/{uuid.uuid4()}/replay", headers=admin), 404)


async def test_replay_is_refused_when_a_newer_event_exists_unless_forced(client, tenant, test_hooks):
    name = "pg://db/s.superseded"
    event_id = await dead_letter(client, tenant, test_hooks, name, n=1)
    test_hooks.BROKEN_SUBJECTS.clear()
    newer = await client.post(
        "/metadata",
        json={"qualified_name": name, "type": "table", "attributes": {"n": 2}},
        headers=tenant.headers("editor"),
    )
    assert newer.status_code == 201
    admin = tenant.headers("admin")
    problem = assert_problem(await client.post(f"{BASE}/{event_id}/replay", headers=admin), 409, "conflict")
    assert "newer event" in problem["detail"] and problem["newer_event_id"]
    assert (await client.get(f"{BASE}/{event_id}", headers=admin)).json()["state"] == "open"  # nothing changed
    forced = await client.post(f"{BASE}/{event_id}/replay", headers=admin, params={"force": "true"})
    assert forced.status_code == 202, forced.text
    state = await settled(client, tenant.headers("viewer"), forced.json()["replay_event_id"])
    assert state["state"] == "applied" and state["result"]["version"] == 2  # the older data, now latest


async def test_replay_all_matching_a_filter(client, tenant, test_hooks):
    a1 = await dead_letter(client, tenant, test_hooks, "pg://db/s.a", n=1)
    a2 = await dead_letter(client, tenant, test_hooks, "pg://db/s.a", n=2)
    b1 = await dead_letter(client, tenant, test_hooks, "pg://db/s.b", n=1)
    c1 = await dead_letter(client, tenant, test_hooks, "pg://db/s.c", n=1)
    test_hooks.BROKEN_SUBJECTS.clear()
    admin = tenant.headers("admin")
    r = await client.post(f"{BASE}/replay", json={"subject": "pg://db/s.a"}, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    # a1 is older than a2 (also dead, but a newer intent): only the latest is replayed.
    assert [x["event_id"] for x in body["replayed"]] == [a2]
    assert [x["event_id"] for x in body["skipped"]] == [a1] and "newer event" in body["skipped"][0]["reason"]
    r = await client.post(f"{BASE}/replay", json={}, headers=admin)
    assert sorted(x["event_id"] for x in r.json()["replayed"]) == sorted([b1, c1])
    assert [x["event_id"] for x in r.json()["skipped"]] == [a1]
    for item in body["replayed"] + r.json()["replayed"]:
        assert (await settled(client, tenant.headers("viewer"), item["replay_event_id"]))["state"] == "applied"
    left = (await client.get(BASE, headers=admin)).json()["items"]
    assert [x["event_id"] for x in left] == [a1]


async def test_discard_drops_a_letter_and_keeps_the_event(client, tenant, test_hooks):
    event_id = await dead_letter(client, tenant, test_hooks, "pg://db/s.discard")
    admin = tenant.headers("admin")
    r = await client.delete(f"{BASE}/{event_id}", headers=admin)
    assert r.status_code == 204 and r.content == b""
    assert (await client.get(BASE, headers=admin)).json()["items"] == []
    discarded = (await client.get(BASE, headers=admin, params={"state": "discarded"})).json()["items"]
    assert [x["event_id"] for x in discarded] == [event_id]
    assert_problem(await client.delete(f"{BASE}/{event_id}", headers=admin), 409)
    assert_problem(await client.post(f"{BASE}/{event_id}/replay", headers=admin), 409)
    assert_problem(await client.delete(f"{BASE}/{uuid.uuid4()}", headers=admin), 404)
    state = await settled(client, tenant.headers("viewer"), event_id)
    assert state["state"] == "dead_lettered" and state["dead_letter"]["state"] == "discarded"


async def test_two_admins_replaying_one_letter_at_once_replay_it_once(client, tenant, test_hooks):
    event_id = await dead_letter(client, tenant, test_hooks, "pg://db/s.twice")
    test_hooks.BROKEN_SUBJECTS.clear()
    admin = tenant.headers("admin")
    answers = await asyncio.gather(*(client.post(f"{BASE}/{event_id}/replay", headers=admin) for _ in range(2)))
    assert sorted(r.status_code for r in answers) == [202, 409]
