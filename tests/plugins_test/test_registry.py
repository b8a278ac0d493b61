"""The registry loads one plugin of every kind from a real test distribution, typed, with its origin."""

from __future__ import annotations

from datetime import UTC, datetime
from types import ModuleType

import pytest

from lily.config import Settings
from lily.domain.errors import Invalid
from lily.plugins import PluginError, load_plugins
from lily.plugins.config import plugin_config
from lily.plugins.protocols import KIND_GROUPS, DeliveryContext, JobContext
from lily.store.db import Database

TEST_DIST = ("lily-test-plugins", "0.1")


def test_one_plugin_of_every_kind_is_loaded_with_its_distribution(
    every_kind: ModuleType, bare_settings: Settings
) -> None:
    plugins = load_plugins(bare_settings)
    ours = {(p.kind, p.name): p for p in plugins.listing if (p.distribution, p.version) == TEST_DIST}
    assert set(ours) == {
        ("handler", "test_notes"),
        ("hook", "test_probe"),
        ("connector", "test_inbox"),
        ("channel", "test_echo"),
        ("classifier", "test_emails"),
        ("quality_check", "test_min_columns"),
        ("job", "test_tick"),
    }
    assert {kind for kind, _ in ours} == set(KIND_GROUPS)
    assert ours[("job", "test_tick")].entry_point == "lily.jobs:test_tick = lily_test_plugins:TickJob"
    assert isinstance(plugins.handlers["test.note"], every_kind.NoteHandler)
    assert [h.name for h in plugins.hooks] == ["source_stamp", "test_probe"]
    assert isinstance(plugins.connectors["test_inbox"], every_kind.InboxConnector)
    assert isinstance(plugins.channels["test_echo"], every_kind.EchoChannel)
    assert plugins.classifiers["test_emails"] is every_kind.EMAILS  # an entry point naming an instance
    assert isinstance(plugins.quality_checks["test_min_columns"], every_kind.MinColumnsCheck)
    assert isinstance(plugins.jobs["test_tick"], every_kind.TickJob)


def test_lilys_built_ins_are_registered_through_its_own_entry_points(bare_settings: Settings) -> None:
    plugins = load_plugins(bare_settings)
    lily = {(p.kind, p.name, p.provided_by) for p in plugins.listing if p.distribution == "lily"}
    assert lily >= {
        ("handler", "assets", None),
        ("handler", "lineage", None),
        ("handler", "upstream_changed", None),
        ("hook", "source_stamp", None),
        ("connector", "openlineage", None),
        ("handler", "openlineage.run", "connector:openlineage"),
    }
    assert set(plugins.handlers) >= {"asset.upsert", "asset.replace", "asset.delete", "openlineage.run"}


async def test_channel_check_classifier_and_job_work_with_their_typed_config(
    every_kind: ModuleType, settings: Settings, db: Database
) -> None:
    plugins = load_plugins(settings)

    channel = plugins.channels["test_echo"]
    config = plugin_config(channel, {"url": "https://hooks.example.com/x", "prefix": "lily"})
    assert isinstance(config, every_kind.EchoConfig)
    ctx = DeliveryContext(http=None, timeout=1, message_id="m-1", attempt=1, tenant_id="t", channel_id="c")
    result = await channel.deliver(ctx, config, {"type": "asset.updated"})
    assert result.ok and every_kind.DELIVERED == [("https://hooks.example.com/x", {"type": "asset.updated"})]

    asset = {"qualified_name": "pg://db/s.users", "attributes": {"columns": [{"name": "id"}, {"name": "Email"}]}}
    (proposal,) = plugins.classifiers["test_emails"].classify(asset)
    assert (proposal.classification, proposal.column) == ("PII.Email", "Email")

    ctx = JobContext(db=db, settings=settings, scheduled_for=datetime.now(UTC), run_id="run-1")
    check = plugins.quality_checks["test_min_columns"]
    assert (await check.evaluate(ctx, asset, plugin_config(check, {"min_columns": 2}))).status == "passed"
    assert (await check.evaluate(ctx, asset, plugin_config(check, {"min_columns": 3}))).observed == 2

    assert await plugins.jobs["test_tick"].run(ctx) == {"run_id": "run-1", "one": 1}
    assert plugins.jobs["test_tick"].schedule == "every 3600s"


@pytest.mark.parametrize(
    ("plugin", "raw", "field"),
    [
        ("channel", {"url": "not a url"}, "config.url"),
        ("channel", {}, "config.url"),
        ("channel", {"url": "https://x.example", "secret": "s"}, "config.secret"),
        ("check", {"min_columns": -1}, "config.min_columns"),
    ],
)
def test_a_bad_plugin_config_is_refused_naming_the_field(
    every_kind: ModuleType, bare_settings: Settings, plugin: str, raw: dict[str, object], field: str
) -> None:
    plugins = load_plugins(bare_settings)
    target = plugins.channels["test_echo"] if plugin == "channel" else plugins.quality_checks["test_min_columns"]
    with pytest.raises(Invalid) as caught:
        plugin_config(target, raw)
    assert caught.value.extra["errors"][0]["field"] == field
    assert target.name in caught.value.detail


def test_a_plugin_without_config_takes_none(every_kind: ModuleType, bare_settings: Settings) -> None:
    connector = load_plugins(bare_settings).connectors["test_inbox"]
    assert plugin_config(connector, None).model_dump() == {}
    with pytest.raises(Invalid) as caught:
        plugin_config(connector, {"anything": 1})
    assert caught.value.extra["errors"][0]["field"] == "config.anything"


def test_hooks_setting_picks_the_hooks_that_run(every_kind: ModuleType, bare_settings: Settings) -> None:
    only_probe = load_plugins(bare_settings.model_copy(update={"hooks": "test_probe"}))
    assert [h.name for h in only_probe.hooks] == ["test_probe"]
    assert not [p for p in only_probe.listing if p.kind == "hook" and p.name == "source_stamp"]
    assert load_plugins(bare_settings.model_copy(update={"hooks": ""})).hooks == ()


def test_disabled_plugins_are_not_loaded(every_kind: ModuleType, bare_settings: Settings) -> None:
    plugins = load_plugins(
        bare_settings.model_copy(update={"plugins_disabled": "job:test_tick, channel:test_echo,connector:openlineage"})
    )
    assert "test_tick" not in plugins.jobs and "test_echo" not in plugins.channels
    # Disabling a connector also drops the handlers it brings: nothing of it is left half-loaded.
    assert "openlineage" not in plugins.connectors and "openlineage.run" not in plugins.handlers
    assert "test_min_columns" in plugins.quality_checks


@pytest.mark.parametrize("entry", ["test_tick", "jobs:test_tick", "job:", "widget:x"])
def test_a_malformed_disabled_entry_is_refused(bare_settings: Settings, entry: str) -> None:
    with pytest.raises(PluginError, match="LILY_PLUGINS_DISABLED entry"):
        load_plugins(bare_settings.model_copy(update={"plugins_disabled": entry}))


def test_core_handlers_cannot_be_disabled(bare_settings: Settings) -> None:
    with pytest.raises(PluginError, match=r"no handler for the core event kind\(s\) asset.upsert"):
        load_plugins(bare_settings.model_copy(update={"plugins_disabled": "handler:assets"}))
