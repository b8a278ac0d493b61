"""Classification: by hand, by rule (a steward's removal sticks), propagated along column and table lineage
(two hops, blocked at an anonymising job, retracted at the source, diamonds), the inventory, the taxonomy,
bad input and tenant isolation of every endpoint."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.api.helpers import assert_problem, fields_of

BASE = "/metadata/governance/classification"


async def wait_idle(app: Any, tenant: Any, rounds: int = 800) -> None:
    """Poll (bounded) until none of the tenant's events waits to be applied: follow-ups included."""
    runtime = app.state.runtime
    for _ in range(rounds):
        async with runtime.db.tenant(tenant.tenant_id) as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM events WHERE status = 'accepted'")
            row = await cur.fetchone()
            if row is not None and row["n"] == 0:
                return
        await asyncio.sleep(0.025)
    raise AssertionError("pipeline did not drain")


async def put(client: Any, tenant: Any, qn: str, columns: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"qualified_name": qn, "type": "table", **fields}
    if columns is not None:
        body.setdefault("attributes", {})["columns"] = [{"name": c} for c in columns]
    r = await client.post("/metadata", json=body, headers=tenant.headers("editor"))
    assert r.status_code in (200, 201), r.text
    result: dict[str, Any] = r.json()
    return result


async def link(
    client: Any, tenant: Any, up: str, down: str, mappings: dict[str, str], process: str | None = None
) -> None:
    """``up`` → ``down``, each downstream column of ``mappings`` derived from the upstream column it names."""
    body: dict[str, Any] = {
        "upstreams": [{"qualified_name": up}],
        "downstreams": [{"qualified_name": down}],
        "column_mappings": [
            {"column": d, "upstreams": [{"asset": {"qualified_name": up}, "column": u}]} for d, u in mappings.items()
        ],
    }
    if process:
        body["process"] = {"qualified_name": process}
    r = await client.post("/metadata/lineage", json=body, headers=tenant.headers("editor"))
    assert r.status_code == 201, r.text


async def classify(
    client: Any, tenant: Any, asset_id: str, names: list[str], column: str | None = None, **extra: Any
) -> Any:
    body: dict[str, Any] = {"asset_id": asset_id, "classifications": names, **extra}
    if column is not None:
        body["column"] = column
    return await client.post(BASE, json=body, headers=tenant.headers("steward"))


async def items(client: Any, tenant: Any, asset_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"{BASE}/{asset_id}", headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    assert r.json()["asset_id"] == asset_id
    result: list[dict[str, Any]] = r.json()["items"]
    return result


def names_at(found: list[dict[str, Any]], column: str | None) -> set[str]:
    return {i["classification"] for i in found if i["column"] == column}


async def asset_doc(client: Any, tenant: Any, asset_id: str) -> dict[str, Any]:
    r = await client.get(f"/metadata/{asset_id}", params={"history_limit": 50}, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def test_manual_classification_is_versioned_audited_and_denormalised(client, tenant, app) -> None:
    a = await put(client, tenant, "pg://db/s.users", ["id", "contact"])
    r = await classify(client, tenant, a["asset_id"], ["PII.Email", "GDPR.Personal"], column="contact", propagate=False)
    assert r.status_code == 200, r.text
    (first, second) = sorted(r.json()["items"], key=lambda i: i["classification"])
    assert (first["classification"], first["column"], first["source"]) == ("GDPR.Personal", "contact", "manual")
    assert second["propagated_from"] is None and second["applied_by"].startswith("key:")
    assert second["confidence"] == 1.0 and second["propagate"] is False
    r = await classify(client, tenant, a["asset_id"], ["Sensitivity.Confidential"])
    assert names_at(r.json()["items"], None) == {"Sensitivity.Confidential"}

    doc = await asset_doc(client, tenant, a["asset_id"])
    # Parents expanded, sorted: what access policies and search match.
    assert doc["classifications"] == [
        "GDPR", "GDPR.Personal", "PII", "PII.Email", "Sensitivity", "Sensitivity.Confidential"
    ]  # fmt: skip
    latest = doc["history"]["items"][0]
    assert latest["action"] == "classification.added" and latest["actor"] == second["applied_by"]
    assert latest["changes"]["added"] == [
        {"classification": "Sensitivity.Confidential", "column": None, "source": "manual"}
    ]
    # The document read back is accepted by PUT (classifications is read-only and unchanged).
    put_back = {k: v for k, v in doc.items() if k != "history"}
    r = await client.put(f"/metadata/{a['asset_id']}", json=put_back, headers=tenant.headers("editor"))
    assert r.status_code == 200, r.text
    assert r.json()["classifications"] == doc["classifications"]  # an asset write keeps them
    r = await client.put(
        f"/metadata/{a['asset_id']}", json={**put_back, "classifications": ["PII"]}, headers=tenant.headers("editor")
    )
    assert "classifications" in fields_of(assert_problem(r, 422))

    r = await client.get(f"/metadata/audit/{a['asset_id']}", headers=tenant.headers("viewer"))
    actions = [e["action"] for e in r.json()["items"]]
    assert actions.count("classification.added") == 2

    r = await client.delete(
        f"{BASE}/{a['asset_id']}", params={"classification": "PII.Email", "column": "contact"},
        headers=tenant.headers("steward"),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert names_at(r.json()["items"], "contact") == {"GDPR.Personal"}
    doc = await asset_doc(client, tenant, a["asset_id"])
    assert "PII" not in doc["classifications"] and "GDPR.Personal" in doc["classifications"]
    assert doc["history"]["items"][0]["action"] == "classification.removed"
    # Change events, written with the change: two added, one removed, each naming what and the version.
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute(
            "SELECT type, version, changes FROM change_events WHERE asset_id = %s AND type LIKE 'classification.%%'"
            " ORDER BY seq",
            [a["asset_id"]],
        )
        events = await cur.fetchall()
    assert [e["type"] for e in events] == ["classification.added", "classification.added", "classification.removed"]
    assert events[2]["changes"]["items"] == [{"classification": "PII.Email", "column": "contact", "source": "manual"}]
    assert events[2]["version"] == doc["version"]


async def test_rule_classification_and_a_stewards_removal_sticks(client, tenant, app) -> None:
    a = await put(
        client, tenant, "pg://db/s.customers",
        attributes={"columns": [
            {"name": "id", "type": "bigint"},
            {"name": "customerEmail"},
            {"name": "PHONE_NUMBER"},
            {"name": "client_addr", "type": "inet"},
            {"name": "notes", "description": "The customer's date of birth"},
            {"name": "emailed_count"},
        ]},
    )  # fmt: skip
    await wait_idle(app, tenant)
    found = {(i["column"], i["classification"]): i for i in await items(client, tenant, a["asset_id"])}
    assert set(found) == {
        ("customerEmail", "PII.Email"),
        ("PHONE_NUMBER", "PII.Phone"),
        ("client_addr", "PII.IPAddress"),
        ("notes", "PII.DateOfBirth"),
    }
    email = found[("customerEmail", "PII.Email")]
    assert email["source"] == "rule" and email["applied_by"] == "classifier:pii" and 0 < email["confidence"] < 1
    assert found[("notes", "PII.DateOfBirth")]["confidence"] < email["confidence"]  # a description is weaker
    history = (await asset_doc(client, tenant, a["asset_id"]))["history"]["items"]
    assert history[0]["action"] == "classification.added" and history[0]["actor"] == "lily:classifier"

    r = await client.delete(
        f"{BASE}/{a['asset_id']}", params={"classification": "PII.Email", "column": "customerEmail"},
        headers=tenant.headers("steward"),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    # The asset changes (a new column the rule also classifies): the removed one is not re-added.
    await put(
        client, tenant, "pg://db/s.customers",
        attributes={"columns": [{"name": "customerEmail"}, {"name": "PHONE_NUMBER"}, {"name": "ssn"}]},
    )  # fmt: skip
    await wait_idle(app, tenant)
    found_now = {(i["column"], i["classification"]) for i in await items(client, tenant, a["asset_id"])}
    assert found_now == {("PHONE_NUMBER", "PII.Phone"), ("ssn", "PII.NationalId")}  # columns gone: theirs too
    # A steward classifying it by hand lifts the removal.
    r = await classify(client, tenant, a["asset_id"], ["PII.Email"], column="customerEmail")
    assert ("customerEmail", "PII.Email") in {(i["column"], i["classification"]) for i in r.json()["items"]}


async def test_propagation_through_two_hops_of_column_lineage(client, tenant, app) -> None:
    a = await put(client, tenant, "a", ["id", "email"])
    b = await put(client, tenant, "b", ["id", "contact_email"])
    c = await put(client, tenant, "c", ["mail", "other"])
    await link(client, tenant, "a", "b", {"contact_email": "email", "id": "id"})
    await link(client, tenant, "b", "c", {"mail": "contact_email", "other": "id"})
    await wait_idle(app, tenant)
    r = await classify(client, tenant, a["asset_id"], ["GDPR.Personal"], column="email")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)

    (at_b,) = [i for i in await items(client, tenant, b["asset_id"]) if i["classification"] == "GDPR.Personal"]
    assert at_b["column"] == "contact_email" and at_b["source"] == "propagated"
    (at_c,) = [i for i in await items(client, tenant, c["asset_id"]) if i["classification"] == "GDPR.Personal"]
    assert at_c["column"] == "mail"
    # "Why is this column personal data?": from a.email, two steps, the last through b.contact_email.
    assert at_c["propagated_from"] == {
        "asset_id": a["asset_id"], "column": "email", "distance": 2,
        "via": {"asset_id": b["asset_id"], "column": "contact_email"},
    }  # fmt: skip
    assert at_c["applied_by"] == "lily:propagation"
    doc = await asset_doc(client, tenant, c["asset_id"])
    assert "GDPR.Personal" in doc["classifications"]
    step = next(v for v in doc["history"]["items"] if v["action"] == "classification.added")
    assert step["origin"]["origin"] == {"asset_id": a["asset_id"], "column": "email"}
    assert step["origin"]["via"] == {"asset_id": b["asset_id"], "column": "contact_email"}
    # Columns not derived from the classified one get nothing.
    assert names_at(await items(client, tenant, c["asset_id"]), "other") <= {"PII.Email"} - {"PII.Email"}


async def test_lineage_added_after_the_classification_carries_it_and_depth_is_bounded(client, tenant, app) -> None:
    r = await client.put(
        f"/tenants/{tenant.tenant_id}/config", json={"propagation": {"max_depth": 2}}, headers=tenant.headers("admin")
    )
    assert r.status_code == 200, r.text
    assets = [await put(client, tenant, f"n{i}") for i in range(4)]
    r = await classify(client, tenant, assets[0]["asset_id"], ["Sensitivity.Restricted"])
    assert r.status_code == 200, r.text
    for i in range(3):  # table lineage n0 → n1 → n2 → n3, written after the classification
        await link(client, tenant, f"n{i}", f"n{i + 1}", {})
    await wait_idle(app, tenant)
    got = [names_at(await items(client, tenant, x["asset_id"]), None) for x in assets]
    assert got == [{"Sensitivity.Restricted"}, {"Sensitivity.Restricted"}, {"Sensitivity.Restricted"}, set()]


async def test_propagation_is_blocked_at_an_anonymising_job(client, tenant, app) -> None:
    a = await put(client, tenant, "raw.users", ["email"])
    await put(client, tenant, "jobs.hash_emails", type="job", attributes={"lily": {"blocks_propagation": ["PII.*"]}})
    h = await put(client, tenant, "clean.users", ["digest"])
    await link(client, tenant, "raw.users", "clean.users", {"digest": "email"}, process="jobs.hash_emails")
    r = await classify(client, tenant, a["asset_id"], ["PII.Email", "Sensitivity.Confidential"], column="email")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    # PII stops at the hashing job; what it does not block goes through.
    assert names_at(await items(client, tenant, h["asset_id"]), "digest") == {"Sensitivity.Confidential"}


async def _diamond(client: Any, tenant: Any, app: Any) -> dict[str, dict[str, Any]]:
    """a.x → b.x → d.x and a.x → c.x → d.x, a.x classified PII.Email."""
    nodes = {n: await put(client, tenant, n, ["x"]) for n in ("a", "b", "c", "d")}
    for up, down in (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")):
        await link(client, tenant, up, down, {"x": "x"})
    r = await classify(client, tenant, nodes["a"]["asset_id"], ["PII.Email"], column="x")
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    at_d = [i for i in await items(client, tenant, nodes["d"]["asset_id"]) if i["classification"] == "PII.Email"]
    assert {i["propagated_from"]["via"]["asset_id"] for i in at_d} == {nodes["b"]["asset_id"], nodes["c"]["asset_id"]}
    return nodes


async def _remove(client: Any, tenant: Any, asset_id: str, name: str, column: str | None) -> None:
    params = {"classification": name, **({"column": column} if column else {})}
    r = await client.delete(f"{BASE}/{asset_id}", params=params, headers=tenant.headers("steward"))
    assert r.status_code == 200, r.text


async def test_diamond_one_path_removed_keeps_it_both_removed_drops_it(client, tenant, app) -> None:
    nodes = await _diamond(client, tenant, app)
    d = nodes["d"]["asset_id"]
    await _remove(client, tenant, nodes["b"]["asset_id"], "PII.Email", "x")
    await wait_idle(app, tenant)
    (left,) = [i for i in await items(client, tenant, d) if i["classification"] == "PII.Email"]
    assert left["propagated_from"]["via"]["asset_id"] == nodes["c"]["asset_id"]
    assert "PII.Email" in (await asset_doc(client, tenant, d))["classifications"]
    await _remove(client, tenant, nodes["c"]["asset_id"], "PII.Email", "x")
    await wait_idle(app, tenant)
    assert await items(client, tenant, d) == []
    assert (await asset_doc(client, tenant, d))["classifications"] == []


async def test_removed_at_the_source_goes_everywhere_it_went(client, tenant, app) -> None:
    nodes = await _diamond(client, tenant, app)
    await _remove(client, tenant, nodes["a"]["asset_id"], "PII.Email", "x")
    await wait_idle(app, tenant)
    for name in ("a", "b", "c", "d"):
        assert await items(client, tenant, nodes[name]["asset_id"]) == [], name
    history = (await asset_doc(client, tenant, nodes["d"]["asset_id"]))["history"]["items"]
    assert [v["action"] for v in history[:2]] == ["classification.removed", "classification.removed"]


async def test_a_second_origin_keeps_the_downstream_classified(client, tenant, app) -> None:
    a1 = await put(client, tenant, "a1", ["x"])
    a2 = await put(client, tenant, "a2", ["y"])
    d = await put(client, tenant, "d", ["z"])
    r = await client.post(
        "/metadata/lineage", headers=tenant.headers("editor"),
        json={"upstreams": [{"qualified_name": "a1"}, {"qualified_name": "a2"}],
              "downstreams": [{"qualified_name": "d"}],
              "column_mappings": [{"column": "z", "upstreams": [{"asset": {"qualified_name": "a1"}, "column": "x"},
                                                                {"asset": {"qualified_name": "a2"}, "column": "y"}]}]},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    for asset, column in ((a1, "x"), (a2, "y")):
        assert (await classify(client, tenant, asset["asset_id"], ["PII.Name"], column=column)).status_code == 200
    await wait_idle(app, tenant)
    await _remove(client, tenant, a1["asset_id"], "PII.Name", "x")
    await wait_idle(app, tenant)
    (left,) = await items(client, tenant, d["asset_id"])
    assert left["propagated_from"]["asset_id"] == a2["asset_id"]
    await _remove(client, tenant, a2["asset_id"], "PII.Name", "y")
    await wait_idle(app, tenant)
    assert await items(client, tenant, d["asset_id"]) == []


async def test_inventory_pages_and_a_parent_matches_its_children(client, tenant, app) -> None:
    r = await client.post(f"{BASE}/taxonomy", json={"name": "PIIX"}, headers=tenant.headers("steward"))
    assert r.status_code == 201, r.text
    expected: set[tuple[str, str | None, str]] = set()
    for i in range(5):
        a = await put(client, tenant, f"inv{i}", ["c1", "c2"])
        for column, name in (("c1", "PII.Email"), ("c2", "PII.Contact" if False else "PII.Phone"), (None, "PIIX")):
            r = await classify(client, tenant, a["asset_id"], [name], column=column, propagate=False)
            assert r.status_code == 200, r.text
            if name.startswith("PII."):
                expected.add((a["asset_id"], column, name))
        await classify(client, tenant, a["asset_id"], ["Sensitivity.Internal"], propagate=False)
    seen: list[tuple[str, str | None, str]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"classification": "PII", "limit": 3, **({"cursor": cursor} if cursor else {})}
        r = await client.get(BASE, params=params, headers=tenant.headers("viewer"))
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 3
        seen += [(i["asset_id"], i["column"], i["classification"]) for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 4 and len(seen) == len(set(seen)) == 10
    assert set(seen) == expected  # PII.* only: not PIIX, not Sensitivity
    r = await client.get(BASE, params={"classification": "PII.Email"}, headers=tenant.headers("viewer"))
    assert {i["classification"] for i in r.json()["items"]} == {"PII.Email"} and len(r.json()["items"]) == 5
    assert r.json()["items"][0]["sources"] == ["manual"] and r.json()["items"][0]["qualified_name"].startswith("inv")
    r = await client.get(BASE, headers=tenant.headers("viewer"))
    assert len(r.json()["items"]) == 20
    r = await client.get(BASE, params={"cursor": "bm90LW91cnM"}, headers=tenant.headers("viewer"))
    assert "cursor" in fields_of(assert_problem(r, 422))


async def test_taxonomy_lists_built_ins_and_added_names(client, tenant, other_tenant, app) -> None:
    r = await client.post(
        f"{BASE}/taxonomy", json={"name": "Finance.Salary", "description": "Pay"}, headers=tenant.headers("steward")
    )
    assert r.status_code == 201 and r.json()["built_in"] is False and r.json()["created_by"].startswith("key:")
    assert_problem(
        await client.post(f"{BASE}/taxonomy", json={"name": "Finance.Salary"}, headers=tenant.headers("steward")), 409
    )
    assert_problem(
        await client.post(f"{BASE}/taxonomy", json={"name": "PII.Email"}, headers=tenant.headers("steward")), 409
    )
    assert_problem(await client.post(f"{BASE}/taxonomy", json={"name": "X"}, headers=tenant.headers("editor")), 403)
    assert "name" in fields_of(
        assert_problem(
            await client.post(f"{BASE}/taxonomy", json={"name": "bad name"}, headers=tenant.headers("steward")), 422
        )
    )
    listed = {
        i["name"]: i for i in (await client.get(f"{BASE}/taxonomy", headers=tenant.headers("viewer"))).json()["items"]
    }
    assert listed["PII.Email"]["built_in"] and listed["Finance.Salary"]["description"] == "Pay"
    # Another tenant's taxonomy is its own.
    theirs = (await client.get(f"{BASE}/taxonomy", headers=other_tenant.headers("viewer"))).json()["items"]
    assert "Finance.Salary" not in {i["name"] for i in theirs} and "PII.Email" in {i["name"] for i in theirs}
    a = await put(client, tenant, "pay", ["salary"])
    assert (await classify(client, tenant, a["asset_id"], ["Finance.Salary"], column="salary")).status_code == 200
    b = await put(client, other_tenant, "pay", ["salary"])
    r = await classify(client, other_tenant, b["asset_id"], ["Finance.Salary"], column="salary")
    assert "classifications[0]" in fields_of(assert_problem(r, 422))


async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(client, tenant, app) -> None:
    a = await put(client, tenant, "bad", ["email"])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"classifications": ["PII.Nope"]}, "classifications[0]"),
        ({"classifications": ["PII.Email", "Made.Up"]}, "classifications[1]"),
        ({"classifications": ["not a name"]}, "classifications[0]"),
        ({"classifications": []}, "classifications"),
        ({"classifications": [f"PII.N{i}" for i in range(33)]}, "classifications"),
        ({"classifications": ["PII.Email"], "column": "nope"}, "column"),
        ({"classifications": ["PII.Email"], "column": ""}, "column"),
        ({"classifications": ["PII.Email"], "confidence": 2}, "confidence"),
        ({"classifications": ["PII.Email"], "colour": "red"}, "colour"),
    ]
    for extra, field in cases:
        r = await client.post(BASE, json={"asset_id": a["asset_id"], **extra}, headers=tenant.headers("steward"))
        assert field in fields_of(assert_problem(r, 422)), (extra, r.text)
    r = await client.post(
        BASE, json={"asset_id": "nope", "classifications": ["PII"]}, headers=tenant.headers("steward")
    )
    assert "asset_id" in fields_of(assert_problem(r, 422))
    r = await classify(client, tenant, a["asset_id"], ["PII.Email"], column="email")
    assert r.status_code == 200
    for role in ("viewer", "editor"):
        r = await client.post(
            BASE, json={"asset_id": a["asset_id"], "classifications": ["PII"]}, headers=tenant.headers(role)
        )
        assert_problem(r, 403)
        r = await client.delete(f"{BASE}/{a['asset_id']}", params={"classification": "PII.Email", "column": "email"},
                                headers=tenant.headers(role))  # fmt: skip
        assert_problem(r, 403)
    # Removing what is not there: 404, for a name, a column and the asset itself.
    for params in ({"classification": "PII.Phone", "column": "email"}, {"classification": "PII.Email"},
                   {"classification": "PII.Email", "column": "other"}):  # fmt: skip
        assert_problem(
            await client.delete(f"{BASE}/{a['asset_id']}", params=params, headers=tenant.headers("steward")), 404
        )
    r = await client.delete(
        f"{BASE}/{a['asset_id']}", params={"classification": "bad name"}, headers=tenant.headers("steward")
    )
    assert "classification" in fields_of(assert_problem(r, 422))
    r = await client.get(BASE, params={"classification": "PII", "colour": "red"}, headers=tenant.headers("viewer"))
    assert_problem(r, 422)
    await wait_idle(app, tenant)
    found = await items(client, tenant, a["asset_id"])  # the steward's and the rule's
    assert {(i["classification"], i["source"]) for i in found} == {("PII.Email", "manual"), ("PII.Email", "rule")}


async def test_every_endpoint_answers_another_tenants_asset_like_a_missing_one(
    client, tenant, other_tenant, app
) -> None:
    theirs = await put(client, other_tenant, "secret", ["email"])
    r = await classify(client, other_tenant, theirs["asset_id"], ["PII.Email"], column="email")
    assert r.status_code == 200
    missing = str(uuid.uuid4())

    async def both(method: str, path: str, **kw: Any) -> None:
        a = await client.request(method, path.format(theirs["asset_id"]), headers=tenant.headers("steward"), **kw)
        b = await client.request(method, path.format(missing), headers=tenant.headers("steward"), **kw)
        assert a.status_code == b.status_code == 404
        assert a.content.replace(theirs["asset_id"].encode(), b"X") == b.content.replace(missing.encode(), b"X")
        assert a.headers["content-type"] == b.headers["content-type"]

    await both("GET", BASE + "/{}")
    await both("DELETE", BASE + "/{}", params={"classification": "PII.Email", "column": "email"})
    for asset_id in (theirs["asset_id"], missing):
        r = await client.post(
            BASE, json={"asset_id": asset_id, "classifications": ["PII.Email"]}, headers=tenant.headers("steward")
        )
        assert_problem(r, 404)
    a = await client.post(
        BASE, json={"asset_id": theirs["asset_id"], "classifications": ["PII"]}, headers=tenant.headers("steward")
    )
    b = await client.post(
        BASE, json={"asset_id": missing, "classifications": ["PII"]}, headers=tenant.headers("steward")
    )
    assert a.content.replace(theirs["asset_id"].encode(), b"X") == b.content.replace(missing.encode(), b"X")
    # The inventory is the tenant's own; the other tenant's classification is untouched.
    r = await client.get(BASE, headers=tenant.headers("viewer"))
    assert r.status_code == 200 and r.json()["items"] == []
    r = await client.get(BASE, headers=other_tenant.headers("viewer"))
    assert [i["asset_id"] for i in r.json()["items"]] == [theirs["asset_id"]]
    assert {i["classification"] for i in await items(client, other_tenant, theirs["asset_id"])} == {"PII.Email"}


async def test_access_policies_decide_who_may_classify(client, tenant, app) -> None:
    a = await put(client, tenant, "pg://h/db.fin.pay", ["salary"])
    other = await put(client, tenant, "pg://h/db.ops.jobs", ["salary"])

    async def policy(effect: str, principal: str) -> str:
        body = {"name": f"{effect} {principal}", "effect": effect, "actions": ["govern"], "principals": [principal],
                "resources": {"asset_ids": [a["asset_id"]]}}  # fmt: skip
        r = await client.post("/metadata/access-control", json=body, headers=tenant.headers("steward"))
        assert r.status_code == 201, r.text
        return str(r.json()["policy_id"])

    denied = await policy("deny", "role:steward")
    assert_problem(await classify(client, tenant, a["asset_id"], ["Sensitivity.Internal"]), 403)
    # Only that asset: the steward governs the others as before.
    assert (await classify(client, tenant, other["asset_id"], ["Sensitivity.Internal"])).status_code == 200
    r = await client.delete(f"/metadata/access-control/policies/{denied}", headers=tenant.headers("admin"))
    assert r.status_code == 204
    await policy("allow", "role:editor")
    body = {"asset_id": a["asset_id"], "classifications": ["Sensitivity.Internal"]}
    r = await client.post(BASE, json=body, headers=tenant.headers("editor"))
    assert r.status_code == 200, r.text
    r = await client.post(BASE, json={**body, "asset_id": other["asset_id"]}, headers=tenant.headers("editor"))
    assert_problem(r, 403)
    assert names_at(await items(client, tenant, a["asset_id"]), None) == {"Sensitivity.Internal"}


async def test_removing_lineage_retracts_what_flowed_along_it(client, tenant, app) -> None:
    a = await put(client, tenant, "src", ["x"])
    b = await put(client, tenant, "mid", ["x"])
    c = await put(client, tenant, "end", ["x"])
    await link(client, tenant, "src", "mid", {"x": "x"})
    await link(client, tenant, "mid", "end", {"x": "x"})
    assert (await classify(client, tenant, a["asset_id"], ["PII.Name"], column="x")).status_code == 200
    await wait_idle(app, tenant)
    assert names_at(await items(client, tenant, c["asset_id"]), "x") == {"PII.Name"}
    # mid loses its upstream lineage: mid and, through it, end lose what came that way.
    r = await client.delete(
        f"/metadata/lineage/{b['asset_id']}", params={"direction": "upstream"}, headers=tenant.headers("editor")
    )
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    assert await items(client, tenant, b["asset_id"]) == []
    assert await items(client, tenant, c["asset_id"]) == []
    assert names_at(await items(client, tenant, a["asset_id"]), "x") == {"PII.Name"}


async def test_a_stewards_removal_downstream_stops_propagation_there(client, tenant, app) -> None:
    """Propagation steps of one batch read the rows and removals of their places together (one query for
    all of them): a steward's removal at one downstream column still stops the name there, and only there,
    and what a place already carries is not added twice."""
    src = await put(client, tenant, "src", ["email"])
    downs = [await put(client, tenant, f"d{i}", ["mail", "note"]) for i in range(4)]
    for i in range(4):
        await link(client, tenant, "src", f"d{i}", {"mail": "email"})
    await wait_idle(app, tenant)
    assert (await classify(client, tenant, src["asset_id"], ["GDPR.Personal"], column="email")).status_code == 200
    await wait_idle(app, tenant)
    r = await client.delete(
        f"{BASE}/{downs[1]['asset_id']}",
        params={"classification": "GDPR.Personal", "column": "mail"},
        headers=tenant.headers("steward"),
    )
    assert r.status_code in (200, 204), r.text
    await wait_idle(app, tenant)
    # Sent again (with another confidence): every step runs again, in one batch.
    r = await classify(client, tenant, src["asset_id"], ["GDPR.Personal"], column="email", confidence=0.5)
    assert r.status_code == 200, r.text
    await wait_idle(app, tenant)
    for i, down in enumerate(downs):
        found = [x for x in await items(client, tenant, down["asset_id"]) if x["classification"] == "GDPR.Personal"]
        assert [x["column"] for x in found] == ([] if i == 1 else ["mail"]), (i, found)
