"""The collector's settings of a long-running process (lily.heap)."""

from __future__ import annotations

import gc
import subprocess
import sys
from typing import Any

from lily.heap import YOUNG_THRESHOLD


def test_settling_freezes_what_startup_left_and_raises_the_young_threshold() -> None:
    script = (
        "import gc, lily.api.app\n"
        "from lily.heap import settle_after_startup\n"
        "before = gc.get_freeze_count()\n"
        "settle_after_startup()\n"
        "frozen = gc.get_freeze_count()\n"
        "settle_after_startup()\n"
        "print(before, frozen, gc.get_freeze_count(), gc.get_threshold()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    before, frozen, again, threshold = map(int, done.stdout.split())
    assert before == 0
    # Importing the app leaves tens of thousands of objects for good; all of them leave the collector's sight.
    assert frozen > 10_000
    assert again == frozen  # once per process
    assert threshold == YOUNG_THRESHOLD


def test_the_app_settles_the_heap_when_it_starts(app: Any) -> None:
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
