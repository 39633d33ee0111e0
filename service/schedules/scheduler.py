"""APScheduler 3 wiring: one BackgroundScheduler per scheduler process, its jobs in the job database.

The schedules table is the truth; the APScheduler job store (table `apscheduler_jobs`, same
database) holds one job per active schedule: the cron trigger, `launch.fire` and the schedule id. A
tick (every `schedule_tick_s`, in a memory job store) brings the APScheduler jobs in line with the
table (schedules created, changed or paused by any process) and follows runs to their end.

A job is only replaced when its trigger or misfire settings change (their hash is the job's name),
so a restart keeps each job's stored next run time and APScheduler sees the fires it missed: it
runs the latest one within `misfire_grace_time` (coalesced) or reports it missed, and both are
recorded as runs. Exactly-once across processes comes from the run table's unique constraint (see
`launch`), not from APScheduler; the `scheduler` setting keeps it to one process by default.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from datetime import datetime, timezone
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from service.config import Settings
from service.schedules import cron
from service.schedules.follow import follow
from service.schedules.launch import fire, misfire_grace_s, missed, record_missed
from service.schedules.runtime import Runtime, configure
from service.schedules.store import Schedule
from service.store import JobStore
from service.store.engine import make_engine

log = structlog.get_logger()
TICK_ID = "prunesearch-schedules-tick"


def config_hash(schedule: Schedule) -> str:
    """What the APScheduler job depends on; a change replaces the job (and its next run time)."""
    key = f"{schedule.cron}|{schedule.timezone}|{schedule.missed}|{schedule.grace_s:g}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class SchedulerHost:
    """Runs the scheduler in this process: `start()`, `stop()`; `sync()` after changing schedules."""

    def __init__(self, settings: Settings, jobs: JobStore) -> None:
        self.settings = settings
        self.runtime = Runtime.of(settings, jobs)
        self._engine = make_engine(settings.database_url)
        self._scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self._engine), "local": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1}, timezone=timezone.utc)
        self._sync_lock = threading.Lock()
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not a line per tick; misses still show

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def start(self) -> None:
        configure(self.runtime)
        self._scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
        self._scheduler.start()
        self.sync()
        self._scheduler.add_job(self.tick, "interval", seconds=self.settings.schedule_tick_s, id=TICK_ID,
                                jobstore="local", next_run_time=datetime.now(timezone.utc), misfire_grace_time=None)
        log.info("scheduler.started", tick_s=self.settings.schedule_tick_s)

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._engine.dispose()

    def tick(self) -> None:
        for step in (self.sync, lambda: follow(self.runtime)):
            try:
                step()
            except Exception:  # the next tick retries; a database hiccup must not stop the scheduler
                log.exception("scheduler.tick_failed")

    def sync(self) -> None:
        """Make the APScheduler jobs match the schedules table."""
        with self._sync_lock:
            schedules = {s.id: s for s in self.runtime.schedules.all()}
            existing = {job.id: job for job in self._scheduler.get_jobs(jobstore="default")}
            for job_id in existing:
                if job_id not in schedules or schedules[job_id].paused:
                    self._remove(job_id)
            for s in schedules.values():
                if s.paused:
                    continue
                current = existing.get(s.id)
                if current is not None and current.name == config_hash(s):
                    continue
                try:
                    self._scheduler.add_job(
                        fire, cron.trigger(s.cron, s.timezone), args=[s.id], id=s.id, name=config_hash(s),
                        jobstore="default", replace_existing=True, misfire_grace_time=int(misfire_grace_s(s)),
                        coalesce=True, max_instances=1)
                except Exception:  # another process may be replacing the same job: the next tick settles it
                    log.exception("scheduler.sync_failed", schedule=s.id)

    def next_run(self, schedule_id: str) -> datetime | None:
        job = self._scheduler.get_job(schedule_id, jobstore="default")
        return job.next_run_time if job is not None else None

    def _remove(self, job_id: str) -> None:
        with contextlib.suppress(JobLookupError):  # removed by another process meanwhile
            self._scheduler.remove_job(job_id, jobstore="default")

    def _on_event(self, event: Any) -> None:
        if not isinstance(event, JobExecutionEvent) or event.job_id == TICK_ID:
            return
        if event.code == EVENT_JOB_ERROR:
            log.error("scheduler.fire_failed", schedule=event.job_id, error=repr(event.exception))
            return
        schedule = self.runtime.schedules.get(event.job_id)
        if schedule is None:
            return
        when = event.scheduled_run_time.astimezone(timezone.utc)
        try:
            record_missed(self.runtime, schedule, when)
            missed(self.runtime, schedule, when)
        except Exception:
            log.exception("scheduler.record_missed_failed", schedule=schedule.id)
