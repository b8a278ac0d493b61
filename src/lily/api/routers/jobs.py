"""``/admin/jobs``: the scheduled jobs, their runs, and running one now.

Callers are a tenant's admins or the operator (``LILY_OPERATOR_TOKEN``). Every job today is
deployment-wide (it acts on all tenants), so a tenant admin sees its schedule, next due time, last
run's state and times, but not the error or result of its runs (they may describe any tenant's data),
and may not trigger it: running a deployment-wide job now needs the operator. A tenant admin sees runs
of their own tenant in full and never another tenant's (row-level security decides, not only the query).

A run-now request is queued for the leader to run (it claims it within a poll interval), so jobs only
ever run in a scheduler process and the one-run-per-job rule holds; asking again while one waits
returns the waiting request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from lily.api import pagination
from lily.api.deps import RuntimeDep, authenticate
from lily.api.errors import problem_responses
from lily.api.operator import is_operator_token
from lily.api.runtime import Runtime
from lily.domain.errors import Forbidden, Invalid, NotFound
from lily.domain.roles import Role
from lily.plugins.protocols import ScheduledJob
from lily.scheduler.schedule import ScheduleError, parse
from lily.store import jobs as store
from lily.store.db import Conn, as_pipeline

router = APIRouter(prefix="/admin/jobs", tags=["jobs"])

RUN_PATH = "/lily/v1/admin/jobs/{}/runs/{}"
_HIDDEN = "hidden: the details of a deployment-wide job's runs are shown to the operator only"

State = Literal["queued", "running", "succeeded", "failed"]
JobName = Annotated[str, Path(min_length=1, max_length=200)]


class RunOut(BaseModel):
    run_id: UUID
    job: str
    tenant_id: str | None = Field(description="The tenant a tenant-scoped run was for; null for deployment-wide")
    trigger: Literal["schedule", "manual"]
    state: State
    scheduled_for: datetime = Field(description="The due time it ran for; for a run-now request, when it was asked")
    requested_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    result: dict[str, Any] | None
    runner: str | None = Field(description="The scheduler process that ran it (operator only)")
    status_url: str


class JobOut(BaseModel):
    name: str
    schedule: str
    scope: Literal["deployment", "tenant"]
    next_due_at: datetime | None = Field(description="Null when the schedule cannot be read (see the scheduler's log)")
    last_run: RunOut | None = Field(description="The latest run that started")
    requested_run: RunOut | None = Field(description="A run-now request waiting for the leader")


class LeaderOut(BaseModel):
    active: bool = Field(description="Whether a scheduler process leads (holds the leader lock) now")
    since: datetime | None
    heartbeat_at: datetime | None
    node: str | None = Field(description="host:pid of the leader (operator only)")


class JobsOut(BaseModel):
    items: list[JobOut]
    leader: LeaderOut


class RunsPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Caller:
    operator: bool
    tenant_id: str | None
    actor: str


_bearer = HTTPBearer(auto_error=False, description="A tenant admin's JWT or API key, or LILY_OPERATOR_TOKEN")


async def _caller(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    if credentials is not None and is_operator_token(runtime.settings, credentials.credentials):
        return Caller(operator=True, tenant_id=None, actor="operator")
    principal = await authenticate(runtime, credentials)
    if not principal.role.allows(Role.admin):
        raise Forbidden(f"this needs the admin role; you have {principal.role.value}")
    return Caller(operator=False, tenant_id=principal.tenant_id, actor=principal.actor)


JobsCaller = Annotated[Caller, Depends(_caller)]


async def _jobs(request: Request) -> Mapping[str, ScheduledJob]:
    jobs: Mapping[str, ScheduledJob] = request.app.state.plugins.jobs
    return jobs


Jobs = Annotated[Mapping[str, ScheduledJob], Depends(_jobs)]


def _job(jobs: Mapping[str, ScheduledJob], name: str) -> ScheduledJob:
    job = jobs.get(name)
    if job is None:
        raise NotFound(f"job {name!r} does not exist")
    return job


@contextlib.asynccontextmanager
async def _reading(runtime: Runtime, caller: Caller) -> AsyncIterator[Conn]:
    """A tenant reads as itself (its own runs and the deployment-wide ones); the operator reads all."""
    if caller.tenant_id is not None:
        async with runtime.db.tenant(caller.tenant_id) as conn:
            yield conn
    else:
        async with runtime.db.system() as conn:
            await as_pipeline(conn)
            yield conn


def _run(row: dict[str, Any], caller: Caller) -> RunOut:
    hidden = not caller.operator and row["tenant_id"] is None
    return RunOut(
        run_id=row["run_id"],
        job=row["job"],
        tenant_id=row["tenant_id"],
        trigger=row["trigger"],
        state=row["state"],
        scheduled_for=row["scheduled_for"],
        requested_by=None if hidden else row["requested_by"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=(_HIDDEN if row["error"] else None) if hidden else row["error"],
        result=None if hidden else row["result"],
        runner=row["runner"] if caller.operator else None,
        status_url=RUN_PATH.format(row["job"], row["run_id"]),
    )


@router.get("", response_model=JobsOut, responses=problem_responses())
async def list_jobs(caller: JobsCaller, runtime: RuntimeDep, jobs: Jobs) -> JobsOut:
    """Every job with its schedule, next due time, last run, waiting request, and whether a leader runs."""
    names = sorted(jobs)
    async with _reading(runtime, caller) as conn:
        last = await store.last_runs(conn, names)
        waiting = await store.queued_runs(conn, names)
        leader = await store.leader_status(conn)
    now = datetime.now(UTC)
    items = [
        JobOut(
            name=name,
            schedule=jobs[name].schedule,
            scope="deployment",
            next_due_at=_next_due(jobs[name], now),
            last_run=_run(last[name], caller) if name in last else None,
            requested_run=_run(waiting[name], caller) if name in waiting else None,
        )
        for name in names
    ]
    if not caller.operator:
        leader["node"] = None
    return JobsOut(items=items, leader=LeaderOut(**leader))


def _next_due(job: ScheduledJob, now: datetime) -> datetime | None:
    # A scheduler refuses to start with a bad schedule; an API process without one still lists the job.
    try:
        return parse(job.schedule).next_due(now)
    except ScheduleError:
        return None


def _position(position: Any) -> bool:
    return (
        isinstance(position, list) and len(position) == 2 and all(isinstance(p, str) and len(p) <= 64 for p in position)
    )


@router.get("/{name}/runs", response_model=RunsPage, responses=problem_responses(404))
async def list_runs(
    name: JobName,
    caller: JobsCaller,
    runtime: RuntimeDep,
    jobs: Jobs,
    state: State | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RunsPage:
    """The job's runs, newest due time first, paged by ``next_cursor``."""
    _job(jobs, name)
    position = pagination.decode(cursor, valid=_position)
    after = None
    if position is not None:
        try:
            after = (datetime.fromisoformat(position[0]), UUID(position[1]))
        except ValueError as exc:
            raise Invalid("cursor is not one this API issued", field="cursor") from exc
    async with _reading(runtime, caller) as conn:
        rows = await store.list_runs(conn, name, after=after, limit=limit + 1, state=state)
    page = pagination.page(rows, limit, lambda r: [r["scheduled_for"].isoformat(), str(r["run_id"])])
    return RunsPage(items=[_run(r, caller) for r in page["items"]], next_cursor=page["next_cursor"])


@router.get("/{name}/runs/{run_id}", response_model=RunOut, responses=problem_responses(404))
async def get_run(name: JobName, run_id: UUID, caller: JobsCaller, runtime: RuntimeDep, jobs: Jobs) -> RunOut:
    _job(jobs, name)
    async with _reading(runtime, caller) as conn:
        row = await store.get_run(conn, name, run_id)
    if row is None:
        raise NotFound(f"run {run_id} of job {name!r} does not exist")
    return _run(row, caller)


@router.post("/{name}/run", status_code=202, response_model=RunOut, responses=problem_responses(404))
async def run_now(name: JobName, caller: JobsCaller, runtime: RuntimeDep, jobs: Jobs, response: Response) -> RunOut:
    """Queue a run now; the leader starts it within a poll interval. 202 with the run (and its URL)."""
    _job(jobs, name)
    if not caller.operator:
        raise Forbidden(f"job {name!r} acts on the whole deployment: running it now needs the operator token")
    async with runtime.db.system() as conn:
        await as_pipeline(conn)
        row, _ = await store.request_run(conn, name, caller.actor, None)
    run = _run(row, caller)
    response.headers["Location"] = run.status_url
    return run
