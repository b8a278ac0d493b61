"""Run state kept on a job asset: pure rules, applied by :mod:`.run_handler`.

A job asset carries ``attributes.runs`` (run id → that run's state and its state history) and
``attributes.last_run`` (the run that started last). The state of a run is that of its latest
``eventTime``, whatever order events arrive in: a RUNNING that the network delays past COMPLETE is
recorded in the history and changes nothing else. ``OTHER`` events add metadata without changing the
state (the spec allows them after completion). Applying the same event twice gives the same
attributes, so a re-send creates no version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from lily.connectors.openlineage import facets
from lily.connectors.openlineage.events import EventType

OPENLINEAGE_RUN = "openlineage.run"  # the event kind: one run state change of one job

RUNS = "runs"
LAST_RUN = "last_run"
# Bounds: a job that runs every minute must not grow its asset without end. The oldest runs go first.
MAX_RUNS = 50
MAX_HISTORY = 50
MAX_ERROR_CHARS = 4096

TERMINAL = frozenset({"COMPLETE", "FAIL", "ABORT"})
# At equal eventTimes the later step of the life cycle wins: START < RUNNING < an end state.
_RANK = {"OTHER": -1, "START": 0, "RUNNING": 1, "COMPLETE": 2, "FAIL": 2, "ABORT": 2}


class RunChange(BaseModel):
    """The ``openlineage.run`` payload."""

    model_config = ConfigDict(extra="forbid")

    run_id: UUID
    state: EventType
    event_time: datetime
    job_namespace: str
    job_name: str
    error: str | None = None  # the errorMessage facet's message, on FAIL
    job_facets: dict[str, Any] = Field(default_factory=dict)  # merged into attributes.openlineage


def timestamp(value: datetime) -> str:
    """One spelling for every stored time, so equal times compare equal and strings sort by time."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _order(entry: dict[str, Any]) -> tuple[str, int]:
    return entry["event_time"], _RANK.get(entry["state"], -1)


def _summary(run_id: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    transitions = [h for h in history if h["state"] != "OTHER"]
    deciding = max(transitions, key=_order) if transitions else max(history, key=_order)
    starts = [h["event_time"] for h in history if h["state"] == "START"]
    run: dict[str, Any] = {
        "run_id": run_id,
        "state": deciding["state"],
        "event_time": deciding["event_time"],
        "started_at": min(starts) if starts else None,
        "ended_at": deciding["event_time"] if deciding["state"] in TERMINAL else None,
        "first_event_time": history[0]["event_time"],
        "history": history,
    }
    if deciding.get("error"):
        run["error"] = deciding["error"]
    return run


def apply_change(attributes: dict[str, Any], change: RunChange) -> dict[str, Any]:
    """The ``runs`` and ``last_run`` attributes after ``change`` (equal to the current ones on a re-send),
    and ``openlineage`` (the job's facets, merged facet by facet) when the event carried job facets."""
    runs: dict[str, Any] = dict(attributes.get(RUNS) or {})
    run_id = str(change.run_id)
    entry: dict[str, Any] = {"state": change.state, "event_time": timestamp(change.event_time)}
    if change.error:
        entry["error"] = change.error[:MAX_ERROR_CHARS]
    previous = (runs.get(run_id) or {}).get("history") or []
    # One entry per (state, time): a re-sent event replaces its own entry instead of adding one.
    history = [h for h in previous if (h["state"], h["event_time"]) != (entry["state"], entry["event_time"])]
    history.append(entry)
    history.sort(key=_order)
    runs[run_id] = _summary(run_id, history[-MAX_HISTORY:])
    if len(runs) > MAX_RUNS:
        keep = sorted(runs.values(), key=lambda r: (r["first_event_time"], r["run_id"]))[-MAX_RUNS:]
        runs = {r["run_id"]: r for r in keep}
    latest = max(runs.values(), key=lambda r: (r["first_event_time"], r["run_id"]))
    last_run = {k: latest[k] for k in ("run_id", "state", "event_time", "started_at", "ended_at")}
    out = {RUNS: runs, LAST_RUN: last_run}
    if change.job_facets:
        out[facets.ATTRIBUTE] = facets.merged(
            attributes.get(facets.ATTRIBUTE), change.job_namespace, change.job_name, change.job_facets
        )
    return out
