"""Pipeline tests run with the test hook plugin (``tests/plugins``) installed through entry points."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from lily.config import Settings

from .support import install_test_hooks


@pytest.fixture
def test_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from install_test_hooks(monkeypatch)


@pytest.fixture
def settings(settings: Settings, test_hooks: ModuleType) -> Settings:
    # The app fixture builds its pipeline (loading hooks) from these settings: depending on
    # test_hooks here puts the plugin on the path first.
    return settings
