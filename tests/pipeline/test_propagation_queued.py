"""A propagation step queued before its job came to block the name does not land after the block."""

from __future__ import annotations

from typing import Any

from lily.domain.events import partition_of
from tests.api.test_classification import classify, items, link, put, wait_idle

from .support import hold_partition, subjects_in_partition, until

HELD = 1


def elsewhere(tenant_id: str, partitions: int, prefix: str) -> str:
    """A qualified name outside the held partition."""
    i = 0
    while partition_of(tenant_id, f"{prefix}{i}", partitions) == HELD:
        i += 1
    return f"{prefix}{i}"


async def queued_steps(app: Any, tenant: Any) -> int:
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM events WHERE kind = 'classification.propagate' AND status = 'accepted'"
        )
        row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def test_a_step_queued_before_its_job_blocked_the_name_does_not_land(
    client: Any, app: Any, tenant: Any, settings: Any, database_url: str
) -> None:
    parts = settings.partitions
    (mid,) = subjects_in_partition(tenant.tenant_id, HELD, parts, 1, "pg://q/s.mid")
    src, job = elsewhere(tenant.tenant_id, parts, "pg://q/s.src"), elsewhere(tenant.tenant_id, parts, "jobs.mask")
    nodes = {qn: await put(client, tenant, qn, ["x"]) for qn in (src, mid)}
    await put(client, tenant, job, type="job")
    await link(client, tenant, src, mid, {"x": "x"}, process=job)
    await wait_idle(app, tenant)

    async with hold_partition(database_url, HELD):
        r = await classify(client, tenant, nodes[src]["asset_id"], ["PII.Email", "Sensitivity.Internal"], column="x")
        assert r.status_code == 200, r.text

        async def queued() -> int:
            return await queued_steps(app, tenant)

        await until(queued, what="the propagation step to mid, queued behind the held partition")
        # The job now blocks PII (applied: its partition is not held), while the step to mid still waits.
        await put(client, tenant, job, type="job", attributes={"lily.blocks_propagation": ["PII.*"]})
        assert await queued_steps(app, tenant) == 1
    await wait_idle(app, tenant)
    found = {(i["classification"], i["source"]) for i in await items(client, tenant, nodes[mid]["asset_id"])}
    # What the job does not block still arrives by the same step.
    assert found == {("Sensitivity.Internal", "propagated")}
