"""A Lily job plugin for the scheduler tests: due every second, and it leaves a trace of every run.

It is a real plugin: ``../lily_test_jobs-0.1.dist-info/entry_points.txt`` declares it in the
``lily.jobs`` group, so putting ``tests/plugins/jobs`` on ``sys.path`` (or ``PYTHONPATH`` of a
``lily scheduler`` subprocess) makes the plugin registry find it as it finds an installed package's.

With ``LILY_TEST_JOB_EFFECTS=1`` each run first inserts a row into ``test_job_effects`` (the test
creates that table), independently of the scheduler's own records, so a test can check that no due time
ran twice from what the job itself saw. Then it works for a moment, so a kill can land mid-run.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from lily.plugins.protocols import JobContext

WORK_SECONDS = 0.2


class Beat:
    name = "test_beat"
    schedule = "every 1s"

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        if os.environ.get("LILY_TEST_JOB_EFFECTS") == "1":
            async with ctx.db.system() as conn:
                await conn.execute(
                    "INSERT INTO test_job_effects (job, scheduled_for, run_id, pid) VALUES (%s, %s, %s, %s)",
                    [self.name, ctx.scheduled_for, ctx.run_id, os.getpid()],
                )
        await asyncio.sleep(WORK_SECONDS)  # the work itself: a window for the kill to land in
        return {"pid": os.getpid()}
