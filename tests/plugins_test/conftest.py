"""Registry tests load real distributions from ``tests/plugins`` through the entry-point mechanism."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from lily.config import Settings

from .support import install_every_kind


@pytest.fixture
def every_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from install_every_kind(monkeypatch)


@pytest.fixture
def bare_settings(tmp_path: Path) -> Settings:
    """Settings for tests that only load plugins: no database is needed to read entry points."""
    return Settings(home=tmp_path, database_url="postgresql:///unused", jwt_secret="x" * 40)
