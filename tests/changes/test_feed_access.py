"""The change feed hides what access policies hide from the caller (migration 0008's restrictive policy
on ``assets``, which the feed's join goes through)."""

from __future__ import annotations

from typing import Any

from tests.changes.test_feed_api import changes, collect, link, put


async def test_changes_of_assets_the_caller_may_not_read_are_hidden(client: Any, tenant: Any) -> None:
    r = await client.post(
        "/metadata/access-control",
        json={
            "name": "no secrets for viewers",
            "effect": "deny",
            "actions": ["read"],
            "principals": ["role:viewer"],
            "resources": {"qualified_name_prefix": "pg://wh/secret."},
        },
        headers=tenant.headers("admin"),
    )
    assert r.status_code == 201, r.text
    await put(client, tenant, "pg://wh/secret.salaries")
    await put(client, tenant, "pg://wh/public.orders")
    await link(client, tenant, "pg://wh/secret.salaries", "pg://wh/public.orders")
    # An admin sees every event; the viewer only those about assets it may read.
    everything = await collect(client, tenant, 3, role="admin")
    assert [i["qualified_name"] for i in everything] == [
        "pg://wh/secret.salaries",
        "pg://wh/public.orders",
        "pg://wh/public.orders",
    ]
    seen = await changes(client, tenant, role="viewer")
    assert [(i["type"], i["qualified_name"]) for i in seen["items"]] == [
        ("asset.created", "pg://wh/public.orders"),
        ("lineage.added", "pg://wh/public.orders"),
    ]
