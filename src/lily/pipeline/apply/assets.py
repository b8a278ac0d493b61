"""Applies asset upserts, replaces and deletes: compute each next version in Python (one domain
function, :func:`lily.domain.versions.next_version`), write them as sets."""

from __future__ import annotations

from pydantic import ValidationError

from lily.domain import assets as rules
from lily.domain.errors import Invalid, NotFound, PreconditionFailed, invalid_from
from lily.domain.events import ASSET_DELETE, ASSET_REPLACE, ASSET_UPSERT
from lily.domain.versions import Change, Delete, Replace, Upsert, next_version
from lily.pipeline.apply.changes import ChangeSet, writer
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
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
                version = next_version(before, event.subject, _change(event), writer(ctx, event))
            except (NotFound, PreconditionFailed, Invalid) as err:
                event.reject(err)
                continue
            if version is None:
                assert before is not None  # only a write to an existing asset can change nothing
                event.applied(
                    {"asset_id": str(before.asset_id), "version": before.version, "changed": False, "created": False}
                )
                continue
            detail = {"changed": sorted(version.changes), "source": event.source}
            batch.add(event, version, detail=detail)
            event.notes.change = version  # later stages (downstream propagation) react to what changed
            after = version.asset
            event.applied(
                {"asset_id": str(after.asset_id), "version": after.version, "changed": True, "created": version.created}
            )
        await batch.write()


def _change(event: PipelineEvent) -> Change:
    payload, patch = event.payload, event.notes.attributes_patch or None
    if event.kind == ASSET_UPSERT:
        return Upsert(payload, patch)
    if event.kind == ASSET_REPLACE:
        return Replace(payload["fields"], payload.get("if_version"), patch)
    return Delete(payload.get("if_version"))
