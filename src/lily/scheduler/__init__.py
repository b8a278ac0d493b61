"""Timed jobs: ``lily.jobs`` plugins run on cron or interval schedules by one leader at a time.

:mod:`.schedule` computes due times, :mod:`.leader` holds leadership, :mod:`.loop` claims and runs
due times, :mod:`.runner` starts it in ``lily serve`` or ``lily scheduler``, :mod:`.builtin` holds
Lily's own jobs. SQL is in :mod:`lily.store.jobs`.
"""

from lily.scheduler.loop import Scheduler
from lily.scheduler.runner import run_standalone, start_scheduler
from lily.scheduler.schedule import Schedule, ScheduleError, parse

__all__ = ["Schedule", "ScheduleError", "Scheduler", "parse", "run_standalone", "start_scheduler"]
