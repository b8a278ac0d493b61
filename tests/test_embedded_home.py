"""Run as root, the embedded server runs as its own user: a LILY_HOME it cannot reach is refused clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from lily.cli import main
from lily.embedded import EmbeddedHomeUnreachable, check_reachable

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root hands the server to another user"
)


def test_a_private_parent_is_named(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(EmbeddedHomeUnreachable, match=str(private)):
        check_reachable(private / "home")


def test_a_world_searchable_home_passes(server_home: Path) -> None:
    check_reachable(server_home / "home")  # no error: every parent is searchable


def test_the_cli_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.delenv("LILY_DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["migrate"], env={"LILY_HOME": str(private / "home")})
    assert result.exit_code == 1
    assert result.output.startswith("Error: LILY_HOME ") and "chmod o+x" in result.output
