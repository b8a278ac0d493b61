"""A plugin that does not fit its kind's protocol is refused at load time, with a message naming the
entry point, its distribution and version, the kind and what is wrong. The plugins come from a real
distribution (``tests/plugins/broken``), read by ``importlib.metadata``, one entry point at a time."""

from __future__ import annotations

import re

import pytest

from lily.api.app import create_app
from lily.config import Settings
from lily.plugins import PluginError, load_plugins

from .support import only_broken

CASES = [
    ("handler", "sync_apply", "apply() must be `async def`"),
    ("handler", "short_apply", "apply() must take 2 argument(s) (ctx, events), but takes (events)"),
    ("handler", "keyword_apply", "apply() has required keyword-only parameter(s) strict"),
    ("handler", "no_kinds", "'kinds' must not be empty"),
    ("handler", "no_validate", "'kinds' must be a tuple, got list; has no method validate()"),
    ("handler", "steals_assets", "event kind 'asset.upsert' is already handled by handler plugin 'assets'"),
    ("hook", "no_phase", "defines none of pre(), enrich(), post()"),
    ("hook", "sync_pre", "pre() must be `async def`"),
    ("hook", "per_event", "enrich() must take 2 argument(s) (ctx, events), but takes (event)"),
    ("hook", "misnamed", "its name 'something_else' differs from the entry point's name 'misnamed'"),
    ("hook", "source_stamp", "another hook is already named 'source_stamp'"),
    ("hook", "bad_name", "'name' 'bad name, with spaces' must be 1-100 letters"),
    ("connector", "config_not_a_model", "'Config' must be a subclass of pydantic.main.BaseModel"),
    ("connector", "bad_run", "run() must be `async def`"),
    ("connector", "brings_a_bad_handler", ": the handler it brings (SyncApply) is not a valid handler: apply() must"),
    ("connector", "handlers_fail", "handlers() failed: RuntimeError: no database driver"),
    ("connector", "large_bodies_relative", "'large_bodies' must hold absolute path prefixes"),
    ("channel", "no_deliver", "has no method deliver()"),
    ("classifier", "async_classify", "classify() must be a plain `def`, not `async def`"),
    ("quality_check", "no_config", "has no attribute 'Config'"),
    ("job", "schedule_not_text", "'schedule' must be a str, got int"),
    ("job", "missing_module", "cannot be imported: ModuleNotFoundError"),
    ("job", "needs_arguments", "cannot be instantiated with no arguments: TypeError"),
]


@pytest.mark.parametrize(("kind", "name", "problem"), CASES, ids=[f"{k}:{n}" for k, n, _ in CASES])
def test_a_bad_plugin_is_refused_at_load_naming_it(
    monkeypatch: pytest.MonkeyPatch, bare_settings: Settings, kind: str, name: str, problem: str
) -> None:
    only_broken(monkeypatch, name)
    with pytest.raises(PluginError) as caught:
        load_plugins(bare_settings)
    message = str(caught.value)
    assert message.startswith(f"{kind} plugin {name!r} ("), message
    assert "from lily-broken-plugins 0.2" in message, message
    assert problem in message, message


def test_the_entry_point_and_its_target_are_named(monkeypatch: pytest.MonkeyPatch, bare_settings: Settings) -> None:
    only_broken(monkeypatch, "sync_apply")
    with pytest.raises(PluginError, match=re.escape("(lily.handlers: lily_broken_plugins:SyncApply)")):
        load_plugins(bare_settings)


def test_every_problem_of_a_plugin_is_listed_at_once(monkeypatch: pytest.MonkeyPatch, bare_settings: Settings) -> None:
    only_broken(monkeypatch, "no_validate")
    with pytest.raises(PluginError) as caught:
        load_plugins(bare_settings)
    assert str(caught.value).count(";") == 1  # two problems, one message


def test_a_disabled_broken_plugin_is_not_even_imported(
    monkeypatch: pytest.MonkeyPatch, bare_settings: Settings
) -> None:
    only_broken(monkeypatch, "missing_module", "no_phase")
    plugins = load_plugins(bare_settings.model_copy(update={"plugins_disabled": "job:missing_module,hook:no_phase"}))
    assert "missing_module" not in plugins.jobs
    # A hook left out of LILY_HOOKS is not loaded either.
    only_broken(monkeypatch, "no_phase")
    assert [h.name for h in load_plugins(bare_settings.model_copy(update={"hooks": "source_stamp"})).hooks] == [
        "source_stamp"
    ]


def test_the_app_is_not_built_with_a_bad_plugin(monkeypatch: pytest.MonkeyPatch, bare_settings: Settings) -> None:
    only_broken(monkeypatch, "sync_pre")
    with pytest.raises(PluginError, match="hook plugin 'sync_pre'"):
        create_app(bare_settings, "postgresql:///never-reached")  # refused before any connection


def test_a_connector_whose_routes_fail_stops_the_app(monkeypatch: pytest.MonkeyPatch, bare_settings: Settings) -> None:
    only_broken(monkeypatch, "router_fails")
    assert "router_fails" in load_plugins(bare_settings).connectors  # it loads: the failure is in router()
    with pytest.raises(PluginError) as caught:
        create_app(bare_settings, "postgresql:///never-reached")
    message = str(caught.value)
    assert message.startswith("connector plugin 'router_fails' (lily.connectors:router_fails = "), message
    assert "from lily-broken-plugins 0.2: router() failed: KeyError" in message
