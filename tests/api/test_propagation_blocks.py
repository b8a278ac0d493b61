"""Classification propagation and a job's blocking list written later: blocking more retracts what already
flowed through the job's edges (step by step downstream; a place another path or a manual row still
carries keeps the name), blocking something else retracts nothing, blocking less re-flows."""

from __future__ import annotations

from typing import Any

from lily.domain import classification as cls
from lily.pipeline.classify import _blocks_changed
from tests.api.test_classification import classify, items, link, put, wait_idle


async def _job(client: Any, tenant: Any, qn: str, blocks: list[str] | None, flat: bool = False) -> None:
    """Write the job asset ``qn`` blocking ``blocks`` (nested ``lily`` key, or the flat one)."""
    attributes = {"lily.blocks_propagation": blocks} if flat else {"lily": {"blocks_propagation": blocks}}
    await put(client, tenant, qn, type="job", attributes=attributes)


async def _changes(app: Any, tenant: Any, asset_id: str, type_: str) -> list[dict[str, Any]]:
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute(
            "SELECT type, changes FROM change_events WHERE asset_id = %s AND type = %s ORDER BY seq",
            [asset_id, type_],
        )
        return list(await cur.fetchall())


async def _retract_events(app: Any, tenant: Any) -> int:
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM events WHERE kind = 'classification.retract'")
        row = await cur.fetchone()
        return int(row["n"]) if row else 0


def _paths(found: list[dict[str, Any]], column: str | None, name: str) -> set[tuple[str, str | None]]:
    """How a place carries ``name``: (source, the upstream asset of the last step for a propagated row)."""
    return {
        (i["source"], (i["propagated_from"] or {}).get("via", {}).get("asset_id"))
        for i in found
        if i["column"] == column and i["classification"] == name
    }


async def _chain(client: Any, tenant: Any, app: Any) -> dict[str, dict[str, Any]]:
    """src.x →(jobs.copy) mid.x → end.x, src.x classified PII.Email and Sensitivity.Internal."""
    nodes = {n: await put(client, tenant, n, ["x"]) for n in ("src", "mid", "end")}
    await _job(client, tenant, "jobs.copy", [])
    await link(client, tenant, "src", "mid", {"x": "x"}, process="jobs.copy")
    await link(client, tenant, "mid", "end", {"x": "x"})
    r = await classify(client, tenant, nodes["src"]["asset_id"], ["PII.Email", "Sensitivity.Internal"], column="x")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    for n in ("mid", "end"):
        found = await items(client, tenant, nodes[n]["asset_id"])
        assert {i["classification"] for i in found if i["column"] == "x"} == {"PII.Email", "Sensitivity.Internal"}
    return nodes


async def test_a_job_that_now_blocks_retracts_what_flowed_through_it(client, tenant, app) -> None:
    nodes = await _chain(client, tenant, app)
    src, mid, end = (nodes[n]["asset_id"] for n in ("src", "mid", "end"))
    # A steward's own row at the end of the chain is not propagation's to take.
    r = await classify(client, tenant, end, ["PII.Email"], column="x", propagate=False)
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)

    await _job(client, tenant, "jobs.copy", ["PII.*"])
    await wait_idle(app, tenant)
    assert _paths(await items(client, tenant, mid), "x", "PII.Email") == set()
    assert _paths(await items(client, tenant, end), "x", "PII.Email") == {("manual", None)}
    # What the job does not block stays all the way down; the source keeps its own.
    assert _paths(await items(client, tenant, mid), "x", "Sensitivity.Internal") == {("propagated", src)}
    assert _paths(await items(client, tenant, end), "x", "Sensitivity.Internal") == {("propagated", mid)}
    assert _paths(await items(client, tenant, src), "x", "PII.Email") == {("manual", None)}

    # Each retracted place has its change event, naming the row it lost and where it had come from.
    (at_mid,) = await _changes(app, tenant, mid, "classification.removed")
    assert at_mid["changes"]["items"] == [
        {
            "classification": "PII.Email",
            "column": "x",
            "source": "propagated",
            "propagated_from": {"asset_id": src, "column": "x", "distance": 1, "via": {"asset_id": src, "column": "x"}},
        }
    ]
    assert "PII.Email" not in at_mid["changes"]["classifications"]
    (at_end,) = await _changes(app, tenant, end, "classification.removed")
    assert [(i["classification"], i["propagated_from"]["via"]["asset_id"]) for i in at_end["changes"]["items"]] == [
        ("PII.Email", mid)
    ]
    assert "PII.Email" in at_end["changes"]["classifications"]  # the manual row holds it

    # Written again unchanged, the job appends nothing more.
    retracts = await _retract_events(app, tenant)
    await _job(client, tenant, "jobs.copy", ["PII.*"])
    await put(client, tenant, "jobs.copy", type="job", description="hashes e-mail addresses")
    await wait_idle(app, tenant)
    assert await _retract_events(app, tenant) == retracts


async def test_a_blocking_list_that_does_not_match_retracts_nothing(client, tenant, app) -> None:
    nodes = await _chain(client, tenant, app)
    await _job(client, tenant, "jobs.copy", ["GDPR", "PII.Phone"], flat=True)
    await wait_idle(app, tenant)
    assert await _retract_events(app, tenant) == 0
    for n in ("mid", "end"):
        found = await items(client, tenant, nodes[n]["asset_id"])
        assert {i["classification"] for i in found if i["column"] == "x"} == {"PII.Email", "Sensitivity.Internal"}
        assert await _changes(app, tenant, nodes[n]["asset_id"], "classification.removed") == []


async def test_diamond_only_the_blocked_arm_is_retracted(client, tenant, app) -> None:
    """a.x →(jobs.left) b.x → d.x and a.x →(jobs.right) c.x → d.x: only the left job comes to block."""
    nodes = {n: await put(client, tenant, n, ["x"]) for n in ("a", "b", "c", "d")}
    a, b, c, d = (nodes[n]["asset_id"] for n in "abcd")
    await _job(client, tenant, "jobs.left", None)
    await link(client, tenant, "a", "b", {"x": "x"}, process="jobs.left")
    await link(client, tenant, "a", "c", {"x": "x"}, process="jobs.right")
    await link(client, tenant, "b", "d", {"x": "x"})
    await link(client, tenant, "c", "d", {"x": "x"})
    r = await classify(client, tenant, a, ["PII.Email"], column="x")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    assert _paths(await items(client, tenant, d), "x", "PII.Email") == {("propagated", b), ("propagated", c)}

    await _job(client, tenant, "jobs.left", ["*"])
    await wait_idle(app, tenant)
    assert _paths(await items(client, tenant, b), "x", "PII.Email") == set()
    assert _paths(await items(client, tenant, c), "x", "PII.Email") == {("propagated", a)}
    # d keeps the name by the other arm: it loses only the row that came through b.
    assert _paths(await items(client, tenant, d), "x", "PII.Email") == {("propagated", c)}
    (removed,) = await _changes(app, tenant, d, "classification.removed")
    assert [i["propagated_from"]["via"]["asset_id"] for i in removed["changes"]["items"]] == [b]
    assert "PII.Email" in removed["changes"]["classifications"]


async def test_a_step_another_edge_still_carries_stays(client, tenant, app) -> None:
    """up.x → down.x through two jobs (two edges between the same assets): one of them blocking keeps it."""
    up = await put(client, tenant, "up", ["x"])
    down = await put(client, tenant, "down", ["x"])
    await link(client, tenant, "up", "down", {"x": "x"}, process="jobs.one")
    await link(client, tenant, "up", "down", {"x": "x"}, process="jobs.two")
    r = await classify(client, tenant, up["asset_id"], ["PII.Email"], column="x")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    await _job(client, tenant, "jobs.one", ["PII"])
    await wait_idle(app, tenant)
    assert _paths(await items(client, tenant, down["asset_id"]), "x", "PII.Email") == {("propagated", up["asset_id"])}
    assert await _retract_events(app, tenant) == 0
    # Both block (the second job written by a bulk load): the step is gone.
    body = [{"qualified_name": "jobs.two", "type": "job", "attributes": {"lily.blocks_propagation": ["PII.Email"]}}]
    r = await client.post("/metadata/bulk", json=body, headers=tenant.headers("editor"))
    assert r.status_code == 202, r.text
    r = await client.get(
        f"/metadata/bulk/status/{r.json()['job_id']}", params={"wait": 20}, headers=tenant.headers("viewer")
    )
    assert r.json()["state"] == "succeeded", r.text
    await wait_idle(app, tenant)
    assert _paths(await items(client, tenant, down["asset_id"]), "x", "PII.Email") == set()


async def test_a_job_that_blocks_less_lets_it_flow_again(client, tenant, app) -> None:
    src = await put(client, tenant, "src", ["x"])
    mid = await put(client, tenant, "mid", ["x"])
    end = await put(client, tenant, "end", ["x"])
    await _job(client, tenant, "jobs.hash", ["PII.*"])
    await link(client, tenant, "src", "mid", {"x": "x"}, process="jobs.hash")
    await link(client, tenant, "mid", "end", {"x": "x"})
    r = await classify(client, tenant, src["asset_id"], ["PII.Email", "PII.Phone"], column="x")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    assert await items(client, tenant, mid["asset_id"]) == []

    # Narrowed to the phone number: the e-mail flows on, two steps; the phone number stays blocked.
    await _job(client, tenant, "jobs.hash", ["PII.Phone"])
    await wait_idle(app, tenant)
    for asset, via in ((mid, src), (end, mid)):
        found = await items(client, tenant, asset["asset_id"])
        assert {i["classification"] for i in found} == {"PII.Email"}
        assert _paths(found, "x", "PII.Email") == {("propagated", via["asset_id"])}
    # And the block lifted altogether (the key removed).
    await put(client, tenant, "jobs.hash", type="job", attributes={"lily": None})
    await wait_idle(app, tenant)
    found = await items(client, tenant, end["asset_id"])
    assert {i["classification"] for i in found} == {"PII.Email", "PII.Phone"}


def test_only_a_changed_blocking_list_is_noticed() -> None:
    def attrs(before: Any, after: Any) -> dict[str, Any]:
        return {"attributes": {"from": before, "to": after}}

    assert _blocks_changed({"name": {"from": "a", "to": "b"}}) is None
    assert _blocks_changed(attrs({"columns": []}, {"columns": [{"name": "x"}]})) is None
    assert _blocks_changed(attrs({"lily": {"blocks_propagation": ["PII", "GDPR"]}}, {
        "lily.blocks_propagation": ["GDPR", "PII"]
    })) is None  # fmt: skip
    assert _blocks_changed(attrs(None, {"lily": {"blocks_propagation": "*"}})) == (set(), {"*"})
    assert _blocks_changed(attrs({"lily": {"blocks_propagation": ["PII"]}}, {"lily": {}})) == ({"PII"}, set())
    # What the retraction's read narrows to (the patterns decide in the end).
    assert cls.blocked_roots(["PII.*", "GDPR.Personal", "PII"]) == ["GDPR.Personal", "PII"]
    assert cls.blocked_roots(["PII", "*"]) is None


async def test_diamond_with_unequal_arms_keeps_the_name_by_the_longer_arm(client, tenant, app) -> None:
    """a.x →(jobs.short) s.x → d.x and a.x → l1.x → l2.x → d.x. d records only the shorter path (a longer
    one from the same origin is not recorded); when the short arm's job comes to block, the name comes
    back to d by the longer arm. Removed at the source, it goes everywhere."""
    nodes = {n: await put(client, tenant, n, ["x"]) for n in ("a", "s", "l1", "l2", "d")}
    a, s, l2, d = (nodes[n]["asset_id"] for n in ("a", "s", "l2", "d"))
    await _job(client, tenant, "jobs.short", None)
    await link(client, tenant, "a", "s", {"x": "x"}, process="jobs.short")
    for up, down in (("s", "d"), ("a", "l1"), ("l1", "l2"), ("l2", "d")):
        await link(client, tenant, up, down, {"x": "x"})
    r = await classify(client, tenant, a, ["PII.Email"], column="x")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    assert _paths(await items(client, tenant, d), "x", "PII.Email") == {("propagated", s)}

    await _job(client, tenant, "jobs.short", ["PII.*"])
    await wait_idle(app, tenant)
    assert _paths(await items(client, tenant, s), "x", "PII.Email") == set()
    at_d = [i for i in await items(client, tenant, d) if i["column"] == "x" and i["classification"] == "PII.Email"]
    assert [(i["source"], i["propagated_from"]["via"]["asset_id"], i["propagated_from"]["distance"]) for i in at_d] == [
        ("propagated", l2, 3)
    ]

    r = await client.delete(
        f"/metadata/governance/classification/{a}",
        params={"classification": "PII.Email", "column": "x"},
        headers=tenant.headers("steward"),
    )
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    for n in ("s", "l1", "l2", "d"):
        assert _paths(await items(client, tenant, nodes[n]["asset_id"]), "x", "PII.Email") == set(), n


async def test_a_cycle_does_not_hand_a_name_back_to_where_it_was_lost(client, tenant, app) -> None:
    """a.x →(jobs.in) p.x → q.x → p.x (a cycle): when the job comes to block, p loses the name, and q,
    which only has it by way of p, does not give it back."""
    nodes = {n: await put(client, tenant, n, ["x"]) for n in ("a", "p", "q")}
    a = nodes["a"]["asset_id"]
    await _job(client, tenant, "jobs.in", None)
    await link(client, tenant, "a", "p", {"x": "x"}, process="jobs.in")
    await link(client, tenant, "p", "q", {"x": "x"})
    await link(client, tenant, "q", "p", {"x": "x"})
    r = await classify(client, tenant, a, ["PII.Email"], column="x")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    assert _paths(await items(client, tenant, nodes["q"]["asset_id"]), "x", "PII.Email") == {
        ("propagated", nodes["p"]["asset_id"])
    }
    await _job(client, tenant, "jobs.in", ["PII.*"])
    await wait_idle(app, tenant)
    for n in ("p", "q"):
        assert _paths(await items(client, tenant, nodes[n]["asset_id"]), "x", "PII.Email") == set(), n
