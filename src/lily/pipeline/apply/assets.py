"""Applies asset upserts, replaces and deletes: compute each new state in Python, write them as sets."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lily.domain import assets as rules
from lily.domain.errors import Invalid, NotFound, PreconditionFailed, invalid_from
from lily.domain.events import ASSET_DELETE, ASSET_REPLACE, ASSET_UPSERT
from lily.pipeline.apply.changes import ChangeSet
from lily.pipeline.context import BatchContext
from lily.pipeline.model import ATTRIBUTES_PATCH, PipelineEvent
from lily.store import assets as store

VALIDATED_AT_ACCEPT = frozenset({"api", "bulk"})


class AssetHandler:
    name = "assets"
    kinds: tuple[str, ...] = (ASSET_UPSERT, ASSET_REPLACE, ASSET_DELETE)

    def validate(self, event: PipelineEvent) -> None:
        # The REST and bulk endpoints validate with these same models before appending (a replay copies
        # such a payload); re-validating would cost ~30 µs an event on the hot path. Everything else —
        # connectors, plugins, hand-appended events — is checked here.
        if event.source in VALIDATED_AT_ACCEPT:
            return
        try:
            if event.kind == ASSET_UPSERT:
                rules.AssetIn.model_validate(event.payload)
            elif event.kind == ASSET_REPLACE:
                rules.AssetReplace.model_validate(event.payload.get("fields", {}))
        except ValidationError as exc:
            event.reject(invalid_from(exc))

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        current = await store.current_by_names(ctx.conn, ctx.tenant_id, [e.subject for e in events])
        batch = ChangeSet(ctx)
        for event in events:
            before = current.get(event.subject)
            try:
                after, action = self._next_state(event, before, ctx)
            except (NotFound, PreconditionFailed, Invalid) as err:
                event.reject(err)
                continue
            changes = rules.diff(before if before and not before["deleted_at"] else None, after)
            if before is not None and before["placeholder"] != after["placeholder"]:
                changes["placeholder"] = {"from": before["placeholder"], "to": after["placeholder"]}
            if before is not None and before["deleted_at"] is None and action != "asset.deleted" and not changes:
                event.applied(
                    {
                        "asset_id": str(before["asset_id"]),
                        "version": before["version"],
                        "changed": False,
                        "created": False,
                    }
                )
                continue
            batch.add(
                event, before, after, action, changes, detail={"changed": sorted(changes), "source": event.source}
            )
            # Later stages (downstream propagation) react to what changed.
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

    def _next_state(
        self, event: PipelineEvent, before: dict[str, Any] | None, ctx: BatchContext
    ) -> tuple[dict[str, Any], str]:
        live = before is not None and before["deleted_at"] is None
        payload = event.payload
        if event.kind == ASSET_UPSERT:
            state = rules.merge(before if live else None, payload, replace=False)
            action = "asset.updated" if live else ("asset.restored" if before else "asset.created")
        else:
            if not live or before is None:
                raise NotFound(f"asset {payload.get('asset_id')} does not exist")
            expected = payload.get("if_version")
            if expected and before["version"] != expected:
                raise PreconditionFailed(
                    f"asset is at version {before['version']}, not {expected}",
                    current_version=before["version"],
                )
            if event.kind == ASSET_DELETE:
                return {
                    **before,
                    "version": before["version"] + 1,
                    "updated_at": ctx.now,
                    "deleted_at": ctx.now,
                }, "asset.deleted"
            state = rules.merge(before, payload["fields"], replace=True)
            action = "asset.replaced"
        patch = event.notes.get(ATTRIBUTES_PATCH)
        if patch:
            state["attributes"] = {**state["attributes"], **patch}
        return {
            "asset_id": before["asset_id"] if before else rules.asset_id_for(event.tenant_id, event.subject),
            "qualified_name": event.subject,
            "placeholder": False,  # a real write fills in a placeholder
            "version": (before["version"] + 1) if before else 1,
            "created_at": before["created_at"] if before else ctx.now,
            "updated_at": ctx.now,
            "deleted_at": None,
            **state,
        }, action
