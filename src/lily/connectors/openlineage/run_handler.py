"""Applies ``openlineage.run``: a run's state change, recorded on its job asset as a new version.

The rules (latest ``eventTime`` wins, re-sends change nothing, bounded history) are pure and live in
:mod:`lily.connectors.openlineage.runs`; this module reads the job, applies them and writes the result
like any other asset change (version, history, audit). A change that alters nothing writes nothing.
The connector brings it (:meth:`OpenLineageConnector.handlers`): the pipeline core never imports it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lily.connectors.openlineage.runs import OPENLINEAGE_RUN, RunChange, apply_change
from lily.domain import assets as rules
from lily.domain.errors import invalid_from
from lily.pipeline.apply.changes import ChangeSet
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store

JOB_TYPE = "job"


class RunHandler:
    name = "openlineage.run"
    kinds: tuple[str, ...] = (OPENLINEAGE_RUN,)

    def validate(self, event: PipelineEvent) -> None:
        try:
            RunChange.model_validate(event.payload)
        except ValidationError as exc:
            event.reject(invalid_from(exc))

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        current = await store.current_by_names(ctx.conn, ctx.tenant_id, [e.subject for e in events])
        batch = ChangeSet(ctx)
        for event in events:
            change = RunChange.model_validate(event.payload)
            before = current.get(event.subject)
            live = before is not None and before["deleted_at"] is None
            attributes = apply_change(before["attributes"] if before and live else {}, change)
            if before is not None and live and all(before["attributes"].get(k) == v for k, v in attributes.items()):
                event.applied(
                    {
                        "asset_id": str(before["asset_id"]),
                        "version": before["version"],
                        "changed": False,
                        "created": False,
                    }
                )
                continue
            after, action = self._next_state(event, change, before, attributes, ctx)
            changes = rules.diff(before if before and live else None, after)
            batch.add(
                event,
                before,
                after,
                action,
                changes,
                detail={
                    "changed": sorted(changes),
                    "source": event.source,
                    "run_id": str(change.run_id),
                    "state": change.state,
                },
            )
            # What later stages (propagation, outbox) read about an asset change, as AssetHandler leaves it.
            event.notes["change"] = {"action": action, "changes": changes, "asset": after}
            event.applied(
                {
                    "asset_id": str(after["asset_id"]),
                    "version": after["version"],
                    "changed": True,
                    "created": before is None,
                }
            )
        await batch.write()

    @staticmethod
    def _next_state(
        event: PipelineEvent,
        change: RunChange,
        before: dict[str, Any] | None,
        attributes: dict[str, Any],
        ctx: BatchContext,
    ) -> tuple[dict[str, Any], str]:
        live = before is not None and before["deleted_at"] is None
        if before is not None and live:
            state = rules.merge(before, {"attributes": attributes}, replace=False)
            action = "asset.updated"
        else:
            # Normally the job's own upsert came first (same subject, so earlier in the log); a run
            # event replayed on its own still lands on a job asset rather than failing.
            state = rules.merge(
                None,
                {
                    "qualified_name": event.subject,
                    "type": JOB_TYPE,
                    "name": change.job_name[:512],
                    "attributes": attributes,
                },
                replace=False,
            )
            action = "asset.restored" if before is not None else "asset.created"
        return {
            "asset_id": before["asset_id"] if before else rules.asset_id_for(event.tenant_id, event.subject),
            "qualified_name": event.subject,
            "placeholder": False,
            "version": (before["version"] + 1) if before else 1,
            "created_at": before["created_at"] if before else ctx.now,
            "updated_at": ctx.now,
            "deleted_at": None,
            **state,
        }, action
