"""Runs of registered connector instances: the ``connector_polls`` job, and one run from start to end.

The job (a ``lily.jobs`` plugin, every few seconds on the scheduler's leader) takes the lease of due
instances and of instances with a queued run-now request, up to ``LILY_CONNECTOR_CONCURRENCY`` per
process, and starts each run as its own task, so a slow or hanging crawl never holds up another
connector or the scheduler. A run:

1. opens the instance's config (secret fields unsealed) and validates it with the plugin's ``Config``;
2. calls the plugin's ``run(ctx)``, renewing the lease meanwhile, bounded by a timeout;
3. for a crawl, compares each object's fingerprint with what the last crawls wrote and appends to the
   event log only what is new or changed (``asset.upsert``, and the object's lineage), plus an
   ``asset.delete`` for each stale object unless the fail-safe holds — all with ``connector:<id>`` as
   the events' source, so ordering, retries, dead letters, audit and propagation apply as to any write;
   the fingerprints are recorded in the same transaction as the append;
4. records the run (counts, errors), saves the plugin's state, and sets the next due time — after a
   failure, a retry with exponential backoff (never later than the next scheduled run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ValidationError

from lily.config import Settings
from lily.crypto import Keyring, split_secrets
from lily.domain import connectors as rules
from lily.domain.assets import asset_id_for
from lily.domain.errors import Invalid, LilyError
from lily.domain.events import ASSET_DELETE, ASSET_UPSERT, LINEAGE_DELETE, LINEAGE_UPSERT, NewEvent
from lily.plugins.protocols import Connector, JobContext, Observed, RunResult
from lily.scheduler.leader import node_name
from lily.scheduler.targets import TargetGuard
from lily.store import connectors as store
from lily.store import log as store_log
from lily.store.db import Database, as_pipeline

log = logging.getLogger(__name__)

APPEND_CHUNK = 1000  # objects whose events one transaction appends (with their fingerprints)
_NO_LINEAGE = "-"


@dataclass(slots=True)
class RunContext:
    """:class:`lily.plugins.protocols.ConnectorRunContext`, as the run machinery builds it."""

    tenant_id: str
    connector_id: str
    run_id: str
    source: str
    config: BaseModel
    state: dict[str, Any]
    settings: Settings
    db: Database
    guard: TargetGuard
    node: str
    appended: int = 0

    def check_target(self, host: str, port: int, database: str | None = None) -> list[str]:
        return self.guard.check(host, port, database)

    async def append(self, events: Sequence[NewEvent]) -> None:
        stamped = [self._stamp(e) for e in events]
        async with self.db.tenant(self.tenant_id) as conn:
            await store_log.append(conn, stamped, self.settings.partitions)
        self.appended += len(stamped)

    async def heartbeat(self) -> None:
        async with self.db.tenant(self.tenant_id) as conn:
            await store.renew_lease(
                conn, self.tenant_id, UUID(self.connector_id), self.node, self.settings.connector_lease_seconds
            )

    def _stamp(self, event: NewEvent) -> NewEvent:
        event.tenant_id, event.source, event.actor = self.tenant_id, self.source, self.source
        event.request_id = event.request_id or f"connector-run:{self.run_id}"
        return event


@dataclass(slots=True)
class Outcome:
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


class ConnectorPolls:
    """Starts due connector runs and run-now requests (a ``lily.jobs`` plugin; see the module doc)."""

    name = "connector_polls"
    schedule = "every 5s"

    def __init__(self) -> None:
        self.node = node_name()
        self.running: dict[tuple[str, UUID], asyncio.Task[None]] = {}
        self._connectors: Mapping[str, Connector] | None = None
        self._keyring: Keyring | None = None

    def _plugins(self, settings: Settings) -> Mapping[str, Connector]:
        if self._connectors is None:
            from lily.plugins import load_plugins

            self._connectors = load_plugins(settings).connectors
        return self._connectors

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        started = await self.start_due(ctx.db, ctx.settings)
        return {"started": started, "running": len(self.running)}

    async def start_due(self, db: Database, settings: Settings, *, wait: bool = False) -> int:
        """Claim and start what is due; with ``wait``, return only once the started runs ended (tests)."""
        room = settings.connector_concurrency - len(self.running)
        async with db.system() as conn:
            await as_pipeline(conn)
            abandoned = await store.close_abandoned(conn)
            claimed = await store.claim(conn, self.node, room, settings.connector_lease_seconds)
        if abandoned:
            log.warning("closed %s connector run(s) left running by a stopped process", abandoned)
        if self._keyring is None and claimed:
            self._keyring = Keyring.from_settings(settings)
        tasks = []
        for run in claimed:
            key = (run["tenant_id"], run["connector_id"])
            runner = Runner(db, settings, self._plugins(settings), self._keyring, self.node)  # type: ignore[arg-type]
            task = asyncio.create_task(runner.execute(run), name=f"lily-connector-{run['connector_id']}")
            self.running[key] = task
            task.add_done_callback(self._forget(key))
            tasks.append(task)
        if wait and tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(claimed)

    def _forget(self, key: tuple[str, UUID]) -> Any:
        def done(_task: asyncio.Task[None]) -> None:
            self.running.pop(key, None)

        return done


class Runner:
    """One run of one connector instance (see the module doc)."""

    def __init__(
        self, db: Database, settings: Settings, connectors: Mapping[str, Connector], keyring: Keyring, node: str
    ) -> None:
        self.db, self.settings, self.connectors, self.keyring, self.node = db, settings, connectors, keyring, node

    async def execute(self, run: Mapping[str, Any]) -> None:
        tenant_id, connector_id, run_id = run["tenant_id"], run["connector_id"], run["run_id"]
        secrets: list[str] = []
        outcome = Outcome()
        error: str | None = None
        row: Mapping[str, Any] | None = None
        state: dict[str, Any] | None = None
        try:
            async with self.db.tenant(tenant_id) as conn:
                row = await store.load_for_run(conn, tenant_id, connector_id)
            if row is None:
                raise Invalid("the connector was deleted")
            opened = self.keyring.open(row["config_sealed"]) if row["config_sealed"] else {}
            secrets = [str(v) for v in opened.values() if v]
            plugin = self.connectors.get(row["kind"])
            if plugin is None or getattr(plugin, "run", None) is None:
                raise Invalid(f"no runnable connector plugin named {row['kind']!r} is installed")
            try:
                config = plugin.Config.model_validate({**row["config"], **opened})
            except ValidationError as exc:
                raise Invalid(f"the stored config no longer validates: {_first_error(exc)}") from None
            ctx = RunContext(
                tenant_id=tenant_id,
                connector_id=str(connector_id),
                run_id=str(run_id),
                source=rules.source_of(str(connector_id)),
                config=config,
                state=dict(row["state"] or {}),
                settings=self.settings,
                db=self.db,
                guard=TargetGuard.from_settings(self.settings, self.db.url),
                node=self.node,
            )
            async with self._lease_kept(ctx):
                result = await asyncio.wait_for(
                    plugin.run(ctx),  # type: ignore[attr-defined]
                    timeout=self.settings.connector_run_timeout_seconds,
                )
            if not isinstance(result, RunResult):
                raise TypeError(f"run() returned {type(result).__name__}, not a RunResult")
            outcome = await self._apply(ctx, result, config)
            outcome.counts["events"] = outcome.counts.get("events", 0) + ctx.appended
            state = ctx.state
        except asyncio.CancelledError:
            error = "cancelled: the process stopped before the run finished"
            raise
        except TimeoutError:
            error = f"timed out after {self.settings.connector_run_timeout_seconds:g} s"
        except LilyError as exc:
            error = exc.detail
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if error is not None:
                error = rules.trimmed_error(scrub(error, secrets))
                log.warning("connector %s run %s failed: %s", connector_id, run_id, error)
            await asyncio.shield(self._finish(run, row, outcome, error, state))

    @contextlib.asynccontextmanager
    async def _lease_kept(self, ctx: RunContext) -> Any:
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.connector_lease_seconds / 3)
                with contextlib.suppress(Exception):
                    await ctx.heartbeat()

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _apply(self, ctx: RunContext, result: RunResult, config: BaseModel) -> Outcome:
        out = Outcome(errors=[rules.trimmed_error(e) for e in result.errors[: rules.MAX_RUN_ERRORS]])
        out.detail = dict(result.detail)
        if result.objects is None:
            return out
        objects: dict[str, Observed] = {}
        for obj in result.objects:
            if obj.qualified_name in objects:
                out.errors.append(f"{obj.qualified_name}: reported twice; the last one is kept")
            objects[obj.qualified_name] = obj
        seen = {name: fingerprint(obj) for name, obj in objects.items()}
        connector_id = UUID(ctx.connector_id)
        async with self.db.tenant(ctx.tenant_id) as conn:
            previous = await store.fingerprints(conn, ctx.tenant_id, connector_id)
        plan = rules.plan(
            previous,
            seen,
            complete=result.complete,
            max_share=float(getattr(config, "max_removal_share", rules.DEFAULT_MAX_REMOVAL_SHARE)),
            max_count=int(getattr(config, "max_removal_count", rules.DEFAULT_MAX_REMOVAL_MIN)),
        )
        if plan.held:
            out.detail["removal_held"] = plan.held
            out.detail["stale"] = plan.stale
            out.errors.append(plan.held)
        writes = [*plan.created, *plan.updated]
        events = 0
        for start in range(0, max(len(writes), len(plan.removed)), APPEND_CHUNK):
            chunk = writes[start : start + APPEND_CHUNK]
            gone = plan.removed[start : start + APPEND_CHUNK]
            batch: list[NewEvent] = []
            for name in chunk:
                batch.extend(self._events(ctx, objects[name], previous.get(name), seen[name]))
            batch.extend(ctx._stamp(NewEvent(ctx.tenant_id, name, ASSET_DELETE, {}, ctx.source)) for name in gone)
            async with self.db.tenant(ctx.tenant_id) as conn:
                await store_log.append(conn, batch, self.settings.partitions)
                await store.record_seen(conn, ctx.tenant_id, connector_id, {n: seen[n] for n in chunk}, gone)
            events += len(batch)
        out.counts = {
            "seen": len(objects),
            "created": len(plan.created),
            "updated": len(plan.updated),
            "unchanged": plan.unchanged,
            "removed": len(plan.removed),
            "events": events,
        }
        return out

    def _events(self, ctx: RunContext, obj: Observed, before: str | None, digest: str) -> list[NewEvent]:
        """The events that bring Lily up to what the crawl saw of ``obj``: its asset if that part changed,
        its lineage if that part changed (the old upstream edges removed first, so a view that stopped
        reading a table loses the edge)."""
        asset_before, _, lineage_before = (before or "").partition("|")
        asset_now, _, lineage_now = digest.partition("|")
        out: list[NewEvent] = []
        name = obj.qualified_name
        if asset_before != asset_now:
            out.append(NewEvent(ctx.tenant_id, name, ASSET_UPSERT, {**obj.asset, "qualified_name": name}, ctx.source))
        if lineage_before != lineage_now:
            if lineage_before and lineage_before != _NO_LINEAGE:
                payload = {"asset_id": str(asset_id_for(ctx.tenant_id, name)), "direction": "upstream"}
                out.append(NewEvent(ctx.tenant_id, name, LINEAGE_DELETE, payload, ctx.source))
            if obj.lineage is not None:
                out.append(NewEvent(ctx.tenant_id, name, LINEAGE_UPSERT, dict(obj.lineage), ctx.source))
        return [ctx._stamp(e) for e in out]

    async def _finish(
        self,
        run: Mapping[str, Any],
        row: Mapping[str, Any] | None,
        outcome: Outcome,
        error: str | None,
        state: dict[str, Any] | None,
    ) -> None:
        tenant_id, connector_id = run["tenant_id"], run["connector_id"]
        now = datetime.now(UTC)
        schedule = row["schedule"] if row else None
        failures = 0 if error is None else int(row["failures"] if row else 0) + 1
        regular = rules.next_due(schedule, now)
        if error is None:
            next_run = regular
        else:
            delay = rules.retry_delay(
                failures, self.settings.connector_retry_base_seconds, self.settings.connector_retry_max_seconds
            )
            retry = now + timedelta(seconds=delay)
            next_run = min(retry, regular) if regular is not None else (retry if failures <= 3 else None)
        for attempt in range(3):
            try:
                async with self.db.tenant(tenant_id) as conn:
                    await store.finish_run(
                        conn,
                        tenant_id,
                        run["run_id"],
                        succeeded=error is None,
                        counts=outcome.counts,
                        errors=outcome.errors[: rules.MAX_RUN_ERRORS],
                        error=error,
                        detail=outcome.detail,
                    )
                    if state is not None:
                        await store.save_state(conn, tenant_id, connector_id, state)
                    # A run-now request of a healthy connector leaves its schedule where it was.
                    keep = run["trigger"] == "manual" and error is None and row is not None and not row["failures"]
                    await store.release(
                        conn,
                        tenant_id,
                        connector_id,
                        self.node,
                        failures=failures,
                        next_run_at=next_run,
                        keep_next=keep,
                    )
                return
            except Exception:
                if attempt == 2:
                    log.exception("could not record connector run %s", run["run_id"])
                else:
                    await asyncio.sleep(0.5 * (attempt + 1))


def fingerprint(obj: Observed) -> str:
    """Two digests, ``asset|lineage``: either part may change alone."""
    asset = rules.fingerprint(obj.asset, None)
    lineage = rules.fingerprint(obj.lineage, None) if obj.lineage is not None else _NO_LINEAGE
    return f"{asset}|{lineage}"


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))


_URL_CREDENTIALS = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret value and any URL password replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def public_and_sealed(config: BaseModel, keyring: Keyring) -> tuple[dict[str, Any], str | None]:
    """A validated config as the registry stores it: the public part, and the secret part sealed."""
    public, hidden = split_secrets(config)
    return public, (keyring.seal(hidden) if hidden else None)
