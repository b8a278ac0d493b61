"""``lily plugins`` lists what is loaded, by kind, with entry point, distribution and version."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from lily.cli import main

from .support import only_broken


@pytest.fixture
def env(server_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # `lily plugins` reads no database: it must work before one is configured. `lily worker` starts the
    # embedded server before it loads plugins, so the home must be one that server can reach.
    monkeypatch.delenv("LILY_DATABASE_URL", raising=False)
    return {"LILY_HOME": str(server_home)}


def test_lists_every_kind_with_its_origin(every_kind: ModuleType, env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["plugins"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    headers = [line for line in lines if not line.startswith(" ")]
    assert [h.split(" ", 1)[0] for h in headers] == [
        "handler",
        "hook",
        "connector",
        "channel",
        "classifier",
        "quality_check",
        "job",
    ]
    assert all(h.endswith(tuple("0123456789")) for h in headers)  # every kind has at least one here
    row = next(line for line in lines if line.split()[:1] == ["test_tick"])
    assert row.split() == ["test_tick", "lily_test_plugins:TickJob", "lily-test-plugins", "0.1"]
    run = next(line for line in lines if line.split()[:1] == ["openlineage.run"])
    assert run.split()[-3:] == ["(from", "connector", "openlineage)"]


def test_json_output_is_one_object_per_plugin(every_kind: ModuleType, env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["plugins", "--json"], env=env)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    channel = next(r for r in rows if r["kind"] == "channel" and r["name"] == "test_echo")
    assert channel == {
        "kind": "channel",
        "name": "test_echo",
        "entry_point": "lily.channels:test_echo = lily_test_plugins:EchoChannel",
        "distribution": "lily-test-plugins",
        "version": "0.1",
        "provided_by": None,
    }
    assert {r["kind"] for r in rows} == {
        "handler",
        "hook",
        "connector",
        "channel",
        "classifier",
        "quality_check",
        "job",
    }


def test_a_bad_plugin_fails_the_command_with_its_message(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    only_broken(monkeypatch, "no_deliver")
    result = CliRunner().invoke(main, ["plugins"], env=env)
    assert result.exit_code == 1
    assert "channel plugin 'no_deliver'" in result.output and "has no method deliver()" in result.output


def test_a_bad_plugin_stops_the_worker_in_one_line(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Every command that loads plugins (worker, serve, scheduler) reports a refused plugin, not a traceback."""
    only_broken(monkeypatch, "no_deliver")
    result = CliRunner().invoke(main, ["worker"], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "has no method deliver()" in result.output
    assert isinstance(result.exception, SystemExit)  # click.ClickException, not the PluginError escaping
