"""Plugins that are each wrong in one way the registry must catch at load time.

Declared in ``../lily_broken_plugins-0.2.dist-info/entry_points.txt``; tests put ``tests/plugins/broken``
on ``sys.path`` and let the registry see one of these entry points at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel


class SyncApply:
    name = "sync_apply"
    kinds = ("broken.sync",)

    def validate(self, event: Any) -> None: ...

    def apply(self, ctx: Any, events: Any) -> None: ...  # must be async def


class ShortApply:
    name = "short_apply"
    kinds = ("broken.short",)

    def validate(self, event: Any) -> None: ...

    async def apply(self, events: Any) -> None: ...  # the context is missing


class KeywordApply:
    name = "keyword_apply"
    kinds = ("broken.keyword",)

    def validate(self, event: Any) -> None: ...

    async def apply(self, ctx: Any, events: Any, *, strict: bool) -> None: ...


class NoKinds:
    name = "no_kinds"
    kinds: tuple[str, ...] = ()

    def validate(self, event: Any) -> None: ...

    async def apply(self, ctx: Any, events: Any) -> None: ...


class StealsAssets:
    name = "steals_assets"
    kinds = ("asset.upsert",)  # Lily's own handler has it

    def validate(self, event: Any) -> None: ...

    async def apply(self, ctx: Any, events: Any) -> None: ...


class NoValidate:
    name = "no_validate"
    kinds = ["broken.list"]  # a list, not a tuple

    async def apply(self, ctx: Any, events: Any) -> None: ...


class NoPhase:
    name = "no_phase"


class SyncPre:
    name = "sync_pre"

    def pre(self, ctx: Any, events: Any) -> None: ...


class PerEvent:
    name = "per_event"

    async def enrich(self, event: Any) -> None: ...  # the old, per-event shape


class Misnamed:
    name = "something_else"

    async def pre(self, ctx: Any, events: Any) -> None: ...


class SecondSourceStamp:
    name = "source_stamp"  # Lily's own hook is already called that

    async def enrich(self, ctx: Any, events: Any) -> None: ...


class BadName:
    name = "bad name, with spaces"

    async def pre(self, ctx: Any, events: Any) -> None: ...


class ConfigNotAModel:
    name = "config_not_a_model"
    Config = dict

    def router(self, web: Any) -> None:
        return None

    def handlers(self) -> Sequence[Any]:
        return []


class BadRun:
    name = "bad_run"
    Config = BaseModel

    def router(self, web: Any) -> None:
        return None

    def handlers(self) -> Sequence[Any]:
        return []

    def run(self, ctx: Any, tenant_id: str, config: Any) -> None: ...  # a polling run must be async


class BringsABadHandler:
    name = "brings_a_bad_handler"
    Config = BaseModel

    def router(self, web: Any) -> None:
        return None

    def handlers(self) -> Sequence[Any]:
        return [SyncApply()]


class HandlersFail:
    name = "handlers_fail"
    Config = BaseModel

    def router(self, web: Any) -> None:
        return None

    def handlers(self) -> Sequence[Any]:
        raise RuntimeError("no database driver")


class LargeBodiesRelative:
    name = "large_bodies_relative"
    Config = BaseModel
    large_bodies = ("api/v9/upload",)

    def router(self, web: Any) -> None:
        return None

    def handlers(self) -> Sequence[Any]:
        return []


class RouterFails:
    """Loads and checks fine; fails only when the app asks for its routes."""

    name = "router_fails"
    Config = BaseModel

    def router(self, web: Any) -> None:
        raise KeyError("no_such_dependency")

    def handlers(self) -> Sequence[Any]:
        return []


class NoDeliver:
    name = "no_deliver"
    Config = BaseModel


class AsyncClassify:
    name = "async_classify"

    async def classify(self, asset: Any) -> list[Any]:  # must be plain and quick
        return []


class NoConfigCheck:
    name = "no_config"

    async def evaluate(self, ctx: Any, asset: Any, config: Any) -> Any: ...


class ScheduleNotText:
    name = "schedule_not_text"
    schedule = 300

    async def run(self, ctx: Any) -> None: ...


class NeedsArguments:
    name = "needs_arguments"
    schedule = "every 60s"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def run(self, ctx: Any) -> None: ...
