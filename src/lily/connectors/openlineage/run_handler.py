"""Applies ``openlineage.run``: a run's state change, recorded on its job asset as a new version.

The rules (latest ``eventTime`` wins, re-sends change nothing, bounded history) are pure and live in
:mod:`lily.connectors.openlineage.runs`; this module reads the job, applies them and writes the result
like any other asset change (version, history, audit). A change that alters nothing writes nothing.
The connector brings it (:meth:`OpenLineageConnector.handlers`): the pipeline core never imports it.
"""

from __future__ import annotations

from pydantic import ValidationError

from lily.connectors.openlineage.runs import OPENLINEAGE_RUN, RunChange, apply_change
from lily.domain.errors import invalid_from
from lily.domain.versions import Upsert, next_version
from lily.pipeline.apply.changes import ChangeSet, writer
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store

JOB_TYPE = "job"


class RunHandler:
    name = "openlineage.run"
    kinds: tuple[str, ...] = (OPENLINEAGE_RUN,)

    def validate(self, event: PipelineEvent) -> None:
        try:
            event.notes.request = RunChange.model_validate(event.payload)
        except ValidationError as exc:
            event.reject(invalid_from(exc))

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        current = await store.current_by_names(ctx.conn, ctx.tenant_id, [e.subject for e in events])
        batch = ChangeSet(ctx)
        for event in events:
            change: RunChange = event.notes.request
            before = current.get(event.subject)
            live = before is not None and before.live
            attributes = apply_change(before.attributes if before is not None and live else {}, change)
            # Normally the job's own upsert came first (same subject, so earlier in the log); a run
            # event replayed on its own still lands on a job asset rather than failing.
            fields = (
                {"attributes": attributes}
                if live
                else {"type": JOB_TYPE, "name": change.job_name[:512], "attributes": attributes}
            )
            version = next_version(before, event.subject, Upsert(fields), writer(ctx, event))
            if version is None:  # a re-sent event: nothing changes
                assert before is not None
                event.applied(
                    {"asset_id": str(before.asset_id), "version": before.version, "changed": False, "created": False}
                )
                continue
            detail = {
                "changed": sorted(version.changes),
                "source": event.source,
                "run_id": str(change.run_id),
                "state": change.state,
            }
            batch.add(event, version, detail=detail)
            # What later stages (propagation, outbox) read about an asset change, as AssetHandler leaves it.
            event.notes.change = version
            after = version.asset
            event.applied(
                {"asset_id": str(after.asset_id), "version": after.version, "changed": True, "created": version.created}
            )
        await batch.write()
