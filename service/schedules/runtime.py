"""What a firing needs (settings and the two stores), registered once per process.

APScheduler pickles a job as a reference to a module-level function plus its arguments (the
schedule id), so the fire function finds its stores here rather than in its arguments.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from service.config import Settings
from service.schedules.store import ScheduleStore
from service.store import JobStore


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    jobs: JobStore
    schedules: ScheduleStore

    @classmethod
    def of(cls, settings: Settings, jobs: JobStore) -> Runtime:
        return cls(settings, jobs, ScheduleStore.of(jobs))


_current: Runtime | None = None
_lock = threading.Lock()


def configure(runtime: Runtime) -> None:
    global _current
    with _lock:
        _current = runtime


def current() -> Runtime:
    """The registered runtime, or one built from the environment (a process that only runs fires)."""
    global _current
    with _lock:
        if _current is None:
            settings = Settings()
            _current = Runtime.of(settings, JobStore(settings.database_url))
        return _current
