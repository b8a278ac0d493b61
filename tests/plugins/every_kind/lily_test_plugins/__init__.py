"""One Lily plugin of every kind, declared in ``../lily_test_plugins-0.1.dist-info/entry_points.txt``.

Putting ``tests/plugins/every_kind`` on ``sys.path`` makes ``importlib.metadata`` see the distribution
``lily-test-plugins 0.1``, so :func:`lily.plugins.load_plugins` finds these exactly as it finds an
installed package's plugins. Each does something a test can observe:

- ``test_notes`` (handler) applies the custom event kind ``test.note``, recording the transaction it ran in;
- ``test_probe`` (hook) records every batch of ``test.note`` events it sees, before and after apply, with
  the transaction id and tenant setting read through ``ctx.conn``, and refuses the notes that ask for it
  (:data:`REFUSE_ONE` alone, :data:`REFUSE_BATCH` with its whole batch);
- ``test_inbox`` (connector) serves ``POST /test-inbox/notes`` (editor), which appends a ``test.note``;
- ``test_echo`` (channel), ``test_emails`` (classifier, an instance), ``test_min_columns`` (quality check)
  and ``test_tick`` (job) answer from their inputs, with typed ``Config`` models where the kind has one.
"""

# No postponed annotations: InboxConnector's route is built inside a function and FastAPI evaluates
# its Annotated[..., web.editor] parameters while ``web`` is in scope.

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from lily.domain.errors import Invalid
from lily.domain.events import NewEvent
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.plugins.protocols import (
    AppRuntime,
    Caller,
    CheckResult,
    DeliveryContext,
    DeliveryResult,
    EventHandler,
    JobContext,
    NoConfig,
    Proposal,
    WebContext,
)

NOTE = "test.note"
REFUSE_ONE = "refuse me"  # ProbeHook rejects this note alone
REFUSE_BATCH = "refuse the batch"  # ProbeHook raises Invalid: every note of its batch is rejected
SEEN: list[dict[str, Any]] = []  # what ProbeHook saw, batch by batch (tests clear it)
DELIVERED: list[tuple[str, dict[str, Any]]] = []


async def _transaction(ctx: BatchContext) -> dict[str, Any]:
    cur = await ctx.conn.execute(
        "SELECT txid_current() AS txid, current_setting('lily.tenant_id', true) AS tenant_setting"
    )
    row = await cur.fetchone()
    assert row is not None
    return {"txid": row["txid"], "tenant_setting": row["tenant_setting"]}


class NoteHandler:
    name = "test_notes"
    kinds: tuple[str, ...] = (NOTE,)

    def validate(self, event: PipelineEvent) -> None:
        text = event.payload.get("text")
        if not isinstance(text, str) or not text:
            event.reject(Invalid("a note needs its text", field="text"))

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        seen = await _transaction(ctx)
        for event in events:
            event.applied({"text": event.payload["text"].upper(), **seen})


class ProbeHook:
    name = "test_probe"

    async def pre(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        await self._record("pre", ctx, events)
        texts = {e.payload.get("text") for e in events if e.kind == NOTE}
        if REFUSE_BATCH in texts:
            raise Invalid("test_probe refuses this batch", field="text")
        for event in events:
            if event.kind == NOTE and event.payload.get("text") == REFUSE_ONE:
                event.reject(Invalid("test_probe refuses this note", field="text"))

    async def post(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        await self._record("post", ctx, events)

    async def _record(self, phase: str, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        notes = [e for e in events if e.kind == NOTE]
        if notes:  # other batches are none of this test plugin's business
            SEEN.append(
                {
                    "phase": phase,
                    "tenant_id": ctx.tenant_id,
                    "event_ids": [str(e.event_id) for e in notes],
                    "outcomes": [e.outcome for e in notes],
                    **await _transaction(ctx),
                }
            )


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=1000)


class Accepted(BaseModel):
    event_id: str


class InboxConnector:
    name = "test_inbox"
    Config: ClassVar[type[BaseModel]] = NoConfig

    def router(self, web: WebContext) -> APIRouter:
        router = APIRouter(prefix="/test-inbox", tags=["test-inbox"])

        @router.post("/notes", status_code=202, response_model=Accepted, responses=web.problem_responses())
        async def post_note(
            note: Note, caller: Annotated[Caller, web.editor], runtime: Annotated[AppRuntime, web.runtime]
        ) -> Accepted:
            event = NewEvent(caller.tenant_id, note.subject, NOTE, {"text": note.text}, caller.actor, source=self.name)
            (accepted,) = await runtime.writer.append_many(caller.tenant_id, [event])
            return Accepted(event_id=str(accepted.event_id))

        return router

    def handlers(self) -> Sequence[EventHandler]:
        return []


class EchoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: HttpUrl
    prefix: str = ""


class EchoChannel:
    name = "test_echo"
    Config: ClassVar[type[BaseModel]] = EchoConfig

    async def deliver(self, ctx: DeliveryContext, config: BaseModel, message: dict[str, Any]) -> DeliveryResult:
        assert isinstance(config, EchoConfig)
        DELIVERED.append((str(config.url), message))
        return DeliveryResult(ok=True, status=200)


class EmailClassifier:
    name = "test_emails"

    def classify(self, asset: dict[str, Any]) -> Sequence[Proposal]:
        columns = (asset.get("attributes") or {}).get("columns") or []
        return [
            Proposal("PII.Email", c["name"], 0.9, "column name mentions email")
            for c in columns
            if "email" in str(c.get("name", "")).lower()
        ]


EMAILS = EmailClassifier()  # an entry point may name an instance instead of a class


class MinColumnsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_columns: int = Field(default=1, ge=0)


class MinColumnsCheck:
    name = "test_min_columns"
    Config: ClassVar[type[BaseModel]] = MinColumnsConfig

    async def evaluate(self, ctx: JobContext, asset: dict[str, Any], config: BaseModel) -> CheckResult:
        assert isinstance(config, MinColumnsConfig)
        count = len((asset.get("attributes") or {}).get("columns") or [])
        return CheckResult("passed" if count >= config.min_columns else "failed", observed=count)


class TickJob:
    name = "test_tick"
    schedule = "every 3600s"

    async def run(self, ctx: JobContext) -> dict[str, Any] | None:
        async with ctx.db.connection() as conn:
            cur = await conn.execute("SELECT 1 AS one")
            row = await cur.fetchone()
        return {"run_id": ctx.run_id, "one": row["one"] if row else None}
