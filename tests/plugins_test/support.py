"""The test distributions under ``tests/plugins`` and how to make them visible to ``importlib.metadata``."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from lily.plugins import registry

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
EVERY_KIND = PLUGINS / "every_kind"  # lily-test-plugins 0.1: one plugin of every kind
BROKEN = PLUGINS / "broken"  # lily-broken-plugins 0.2: plugins wrong in every way the registry checks
BROKEN_DIST = "lily-broken-plugins"


def install_every_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(EVERY_KIND))
    import lily_test_plugins

    lily_test_plugins.SEEN.clear()
    lily_test_plugins.DELIVERED.clear()
    yield lily_test_plugins
    lily_test_plugins.SEEN.clear()
    lily_test_plugins.DELIVERED.clear()


def only_broken(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make the broken distribution visible, but let the registry see only its entry points ``names``
    (each test one failure). The entry points are the real ones ``importlib.metadata`` reads from the
    ``.dist-info``, with their distribution; Lily's own stay visible too."""
    monkeypatch.syspath_prepend(str(BROKEN))
    real: Callable[..., importlib.metadata.EntryPoints] = importlib.metadata.entry_points

    def select(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return [ep for ep in real(group=group) if ep.dist is None or ep.dist.name != BROKEN_DIST or ep.name in names]

    monkeypatch.setattr(registry, "entry_points", select)
