"""The typed protocols of every plugin kind: the whole extension surface, read in one place.

Each kind is found through its own entry-point group (``KIND_GROUPS``); an entry point names a class
(instantiated with no arguments) or an instance. Lily's own built-ins are registered the same way, in
its ``pyproject.toml``. Every plugin has a ``name`` unique within its kind; kinds that take per-use
settings (connectors, channels, quality checks) declare them as a pydantic model in ``Config``, which
Lily validates before the plugin ever sees them.

These protocols import nothing from Lily's layers at run time (only under ``TYPE_CHECKING``), so any
layer may import this module without a cycle.

    kind             group                 called by
    handler          lily.handlers         the pipeline's apply stage, one handler per event kind
    hook             lily.hooks            the pipeline, before (pre, enrich) and after (post) apply
    connector        lily.connectors       the app factory (routes), the pipeline (handlers), the scheduler
    channel          lily.channels         the dispatcher (outbound deliveries)
    classifier       lily.classifiers      the pipeline's enrich stage, on assets that carry columns
    quality_check    lily.quality_checks   quality rules, on their schedule
    job              lily.jobs             the scheduler (``lily scheduler``)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from fastapi import APIRouter

    from lily.config import Settings
    from lily.domain.events import NewEvent
    from lily.pipeline.context import BatchContext
    from lily.pipeline.model import PipelineEvent
    from lily.pipeline.writer import Writer
    from lily.store.db import Database

Kind = Literal["handler", "hook", "connector", "channel", "classifier", "quality_check", "job"]

KIND_GROUPS: dict[str, str] = {
    "handler": "lily.handlers",
    "hook": "lily.hooks",
    "connector": "lily.connectors",
    "channel": "lily.channels",
    "classifier": "lily.classifiers",
    "quality_check": "lily.quality_checks",
    "job": "lily.jobs",
}


class NoConfig(BaseModel):
    """The config model of a plugin that takes none."""

    model_config = {"extra": "forbid"}


# -- pipeline ----------------------------------------------------------------------------------------


class EventHandler(Protocol):
    """Applies the events of the kinds it names. Gets one tenant's events with distinct subjects, in log
    order, inside the worker's transaction (``ctx.conn``), and sets every event's outcome."""

    name: str
    kinds: tuple[str, ...]

    def validate(self, event: PipelineEvent) -> None:
        """Reject (``event.reject``) a payload this handler cannot apply. Pure: no I/O."""

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        """Apply the events and set each one's outcome (``event.applied`` or ``event.reject``)."""


class PipelineHook(Protocol):
    """Pre- and post-processing around apply, batch by batch, in the worker's transaction.

    A hook defines any of ``pre``, ``enrich`` and ``post`` (all ``async def (ctx, events)``); the ones it
    leaves out are skipped. ``pre``/``enrich`` see the undecided events and may change payloads or reject
    an event (``event.reject``, or raise :class:`lily.domain.errors.Invalid` to reject the whole batch's
    undecided events); ``post`` sees the events as decided. Any other exception is a transient failure:
    the batch rolls back and is retried. Hooks must not do network I/O: send outbound work through the
    outbox instead.
    """

    name: str


HOOK_PHASES = ("pre", "enrich", "post")


class HookPhase(Protocol):
    """The shape of each of a hook's ``pre``, ``enrich`` and ``post`` methods (checked at load)."""

    async def __call__(self, ctx: BatchContext, events: list[PipelineEvent]) -> None: ...


# -- inbound -----------------------------------------------------------------------------------------


class Caller(Protocol):
    """The authenticated caller of a request, as a connector's route sees it."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def actor(self) -> str:
        """Who to record as the author of what the request writes (``user:<name>``, ``key:<id>``)."""


class AppRuntime(Protocol):
    """The process's shared services, as a connector's route sees them."""

    settings: Settings
    db: Database
    writer: Writer


class WebContext(Protocol):
    """What a connector's HTTP routes may use from the API layer, handed to :meth:`Connector.router`,
    so connectors never import ``lily.api``.

    The dependencies are FastAPI ``Depends`` markers, used inside ``Annotated`` so routes stay typed::

        async def record(caller: Annotated[Caller, web.editor], runtime: Annotated[AppRuntime, web.runtime])

    (a module defining such routes inside a function must not use ``from __future__ import annotations``:
    FastAPI evaluates the annotations, and ``web`` is a local name).
    """

    viewer: Any  # Depends(...) → Caller: an authenticated caller with at least the viewer role
    editor: Any  # … at least editor
    steward: Any  # … at least steward
    admin: Any  # … admin
    runtime: Any  # Depends(...) → AppRuntime
    request_id: Any  # Depends(...) → str: the client's X-Request-ID, else a new one
    json_response: type[Any]  # the API's JSON response class (orjson)

    def problem_responses(self, *statuses: int) -> dict[int | str, dict[str, Any]]:
        """A route's OpenAPI ``responses=`` for these error statuses (and the ones every authenticated
        route may answer: 401, 403, 422, 429, 503), as RFC 9457 problems."""

    async def check_writes(self, runtime: Any, caller: Any, written: Sequence[str], read: Sequence[str] = ()) -> None:
        """Apply the tenant's access policies to a write naming assets by qualified name: raises the API's
        403 unless every name in ``written`` may be written and every name in ``read`` read (a name that is
        no asset yet is judged by the name alone, so the answer reveals nothing)."""


@dataclass(slots=True)
class Observed:
    """One object a crawl saw, as the asset it becomes.

    ``qualified_name`` follows the OpenLineage dataset naming spec (``postgres://host:5432/db.schema.table``)
    so crawls, CDC, dbt and OpenLineage events of one table meet on one asset. ``asset`` is the
    ``asset.upsert`` payload (type, name, description, attributes …); ``lineage`` an optional
    ``lineage.upsert`` payload that has this object as its downstream (a view and what it reads).
    The run machinery appends both to the log only when they differ from what the last run wrote.
    """

    qualified_name: str
    asset: dict[str, Any]
    lineage: dict[str, Any] | None = None


@dataclass(slots=True)
class RunResult:
    """What one run of a connector reports to the run machinery.

    A crawler returns ``objects``: every object in the connector's scope. With ``complete`` (the
    default) an object a previous run saw and this one did not is stale and is soft-deleted, unless the
    fail-safe holds (see the README, Connectors). A source that reports deltas (CDC) may instead have
    appended its own events through ``ctx.append`` and return ``objects=None``: then nothing is
    compared or removed. ``errors`` are per-object problems of a run that still succeeded (an object
    skipped); ``detail`` is recorded with the run.
    """

    objects: list[Observed] | None = None
    complete: bool = True
    errors: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


class ConnectorRunContext(Protocol):
    """What a run of a connector instance gets (built by the run machinery, one per run)."""

    tenant_id: str
    connector_id: str
    run_id: str
    source: str  # ``connector:<connector_id>``: the source of every event the run appends
    config: BaseModel  # the instance's ``Config``, validated, its secret fields opened
    state: dict[str, Any]  # the instance's own state between runs (a CDC position); saved when the run succeeds
    settings: Settings

    def check_target(self, host: str, port: int, database: str | None = None) -> list[str]:
        """The addresses ``host`` resolves to, once the address guard (:mod:`lily.netguard`: no loopback,
        private or link-local address unless ``LILY_ALLOW_PRIVATE_TARGETS``) and the own-database check
        passed; raises ``lily.domain.errors.Invalid`` naming ``config`` otherwise. Call it before
        connecting, and connect to one of the addresses it returns (so DNS cannot change in between)."""

    async def append(self, events: Sequence[NewEvent]) -> None:
        """Append events to the log now (stamped with this run's source and actor), for sources that
        report deltas rather than snapshots."""

    async def heartbeat(self) -> None:
        """Renew the instance's lease; long runs call it now and then (the machinery also does)."""


class Connector(Protocol):
    """An inbound source. ``name`` is its type (``openlineage``, ``postgres``, ``mysql``, …).

    A connector may serve HTTP routes (a webhook receiver, a foreign API such as OpenLineage's), bring
    event handlers for the event kinds it appends, and — for crawlers and pollers — be registered per
    tenant in the connector registry with a per-instance ``Config`` and run by Lily's scheduler.
    Secret fields of ``Config`` are typed ``pydantic.SecretStr``: Lily seals them at rest and never
    returns them (see :mod:`lily.crypto`).

    Optional: ``large_bodies: tuple[str, ...]``, path prefixes of its routes (``{name}`` matching one
    path segment, so a route's own path template works) whose request bodies may be
    as large as a bulk load (``LILY_MAX_BULK_BODY_BYTES``) instead of a single write's; and ``run``
    (see :class:`RunnableConnector`), checked when present; ``async removed(config, state, check_target)``,
    called best-effort after an instance was deleted, to release what it holds in the source (a CDC
    replication slot). Only connectors with ``run`` can be
    registered as instances.
    """

    name: str
    Config: ClassVar[type[BaseModel]]

    def router(self, web: WebContext) -> APIRouter | None:
        """Routes to mount (with their own full paths), or None."""

    def handlers(self) -> Sequence[EventHandler]:
        """Event handlers for the kinds this connector appends (may be empty)."""


class RunnableConnector(Connector, Protocol):
    """A connector the registry runs: crawlers, pollers, CDC readers."""

    async def run(self, ctx: ConnectorRunContext) -> RunResult:
        """Read the source once. Raise to fail the run (it is retried with backoff); the message is
        recorded on the run, so it must not hold a credential."""


# -- outbound ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class DeliveryResult:
    """How a delivery attempt ended. ``permanent`` failures are not retried (a 4xx other than 408/429);
    ``disable`` says the destination is gone for good (a webhook's 410): the channel is disabled until
    a steward re-enables it. ``response`` is the receiver's answer (Lily truncates it); never a secret."""

    ok: bool
    status: int | None = None
    error: str | None = None
    permanent: bool = False
    retry_after_seconds: float | None = None
    disable: bool = False
    response: str | None = None


@dataclass(slots=True)
class DeliveryContext:
    """What one delivery attempt gets from the dispatcher besides the channel's config and the message."""

    http: Any  # an httpx.AsyncClient: every request (and redirect hop) passes lily.netguard's address guard
    timeout: float  # seconds for the whole attempt; the dispatcher also cancels an attempt past it
    message_id: str  # stable across retries (the change event's id): Standard Webhooks' webhook-id
    attempt: int  # 1 for the first attempt
    tenant_id: str
    channel_id: str
    signing_secrets: tuple[str, ...] = ()  # ``whsec_…`` secrets to sign with, newest first (webhooks)


class Channel(Protocol):
    """An outbound destination type (``webhook``, ``slack``, ``jira``). ``Config`` holds a channel's
    settings (URL, token, project key …); its ``pydantic.SecretStr`` fields are sealed at rest by Lily and
    never returned by the API (see :mod:`lily.crypto`). Every channel takes a base-URL override.

    ``message`` is a change event (``{"id", "type", "tenant_id", "asset_id", "qualified_name", "version",
    "changes", "actor", "occurred_at", "origin"}``) or a notification (``type`` ``notification.sent``,
    ``changes`` ``{"title", "message", "severity"}``).
    """

    name: str
    Config: ClassVar[type[BaseModel]]

    async def deliver(self, ctx: DeliveryContext, config: BaseModel, message: dict[str, Any]) -> DeliveryResult:
        """Send it once and say how it went. Must not raise for HTTP errors or timeouts (a result with
        ``ok=False``); ``permanent`` stops the retries, ``retry_after_seconds`` delays the next one."""


# -- governance --------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Proposal:
    """A classification a classifier proposes: for the asset (``column`` None) or one of its columns."""

    classification: str
    column: str | None
    confidence: float
    reason: str = ""


class Classifier(Protocol):
    """Proposes classifications for an asset from its document (name, type, description, columns)."""

    name: str

    def classify(self, asset: dict[str, Any]) -> Sequence[Proposal]:
        """Pure and quick: runs in the pipeline on every asset change that carries columns."""


@dataclass(slots=True)
class CheckResult:
    status: Literal["passed", "failed", "error"]
    observed: Any = None
    detail: dict[str, Any] = field(default_factory=dict)


class QualityCheck(Protocol):
    """A data-quality check type (``freshness``, ``row_count``, ``not_null`` …); a rule gives ``Config``."""

    name: str
    Config: ClassVar[type[BaseModel]]

    async def evaluate(self, ctx: JobContext, asset: dict[str, Any], config: BaseModel) -> CheckResult:
        """Evaluate the rule once for one asset."""


# -- timed work --------------------------------------------------------------------------------------


@dataclass(slots=True)
class JobContext:
    """What a scheduled run gets: the database, settings and when the run was due."""

    db: Database
    settings: Settings
    scheduled_for: datetime
    run_id: str


class ScheduledJob(Protocol):
    """Timed work run by ``lily scheduler`` (one leader at a time). ``schedule`` is a cron expression
    (``"*/5 * * * *"``) or ``"every <N>s"``; each due time runs at most once, whichever process leads."""

    name: str
    schedule: str

    async def run(self, ctx: JobContext) -> dict[str, Any] | None:
        """Do the work; the returned dict is recorded with the run. Raise to record a failure."""


PROTOCOLS: dict[str, type[Any]] = {
    "handler": EventHandler,
    "hook": PipelineHook,
    "connector": Connector,
    "channel": Channel,
    "classifier": Classifier,
    "quality_check": QualityCheck,
    "job": ScheduledJob,
}
