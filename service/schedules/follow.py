"""Follow scheduled runs to their end: mirror the job's status, then compare and notify once.

Runs on every scheduler tick (in whichever process runs the scheduler). Ending a run is an atomic
status change guarded by its current status, so when two scheduler processes share a database only
one of them compares the run and sends its webhook.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import structlog

from service.schedules import notify
from service.schedules.compare import compare
from service.schedules.launch import job_plan, latest_with_job
from service.schedules.runtime import Runtime
from service.schedules.store import OPEN, Schedule, ScheduleRun
from service.store.store import utcnow

log = structlog.get_logger()
STARTING_TIMEOUT = timedelta(minutes=5)  # a run still "starting" this long lost its process mid-launch


def follow(rt: Runtime) -> list[ScheduleRun]:
    """Advance every open run; returns the runs this call ended."""
    ended = []
    for run in rt.schedules.open_runs():
        if run.status == "starting" or run.job_id is None:
            if utcnow() - run.created_at > STARTING_TIMEOUT:
                rt.schedules.update_run(run.id, only_if=("starting",), status="failed",
                                        reason="the scheduler stopped while starting this run")
            continue
        job = rt.jobs.get_job(run.job_id)
        if job is None:
            rt.schedules.update_run(run.id, only_if=OPEN, status="failed", reason=f"job {run.job_id} is gone")
            continue
        if not job.is_terminal:
            if job.status != run.status:
                rt.schedules.update_run(run.id, only_if=OPEN, status=job.status)
            continue
        done = rt.schedules.update_run(run.id, only_if=OPEN, status=job.status,
                                       reason=run.reason if job.status == "succeeded" else (job.error or run.reason))
        if done is None:
            continue  # another scheduler process ended it
        schedule = rt.schedules.get(run.schedule_id)
        if schedule is not None:
            done = finish(rt, schedule, done, job.result) or done
        ended.append(done)
    return ended


def finish(rt: Runtime, schedule: Schedule, run: ScheduleRun, result: dict[str, Any] | None) -> ScheduleRun | None:
    """Compare a just-ended run with the previous successful one, flag it, notify when it regressed or failed."""
    flags: list[str] = []
    comparison = None
    if run.status == "succeeded" and result is not None:
        previous = latest_with_job(rt, schedule.id, run.fired_at, frozenset({"succeeded"}))
        previous_job = rt.jobs.get_job(previous.job_id) if previous and previous.job_id else None
        comparison, flags = compare(
            result, previous_job.result if previous_job else None, schedule.thresholds,
            current_plan=job_plan(rt, run.job_id) if run.job_id else None,
            previous_plan=job_plan(rt, previous_job.id) if previous_job else None)
        comparison["previous_run_id"] = previous.id if previous_job and previous else None
        comparison["previous_job_id"] = previous_job.id if previous_job else None
    elif run.status == "failed":
        flags = ["failed"]
    outcome: dict[str, Any] = {"comparison": comparison, "regression": any(f != "failed" for f in flags),
                               "flags": flags}
    if flags and schedule.webhook_url:  # notified before the outcome is stored, so that a reader who sees
        # the comparison sees the webhook's answer with it (one write, not two a reader can fall between)
        outcome["webhook"] = notify.post(schedule.webhook_url, notice(schedule, replace(run, **outcome)))
    updated = rt.schedules.update_run(run.id, **outcome)
    log.info("schedule.run_ended", schedule=schedule.id, run=run.id, status=run.status, flags=flags)
    return updated


def notice(schedule: Schedule, run: ScheduleRun) -> dict[str, Any]:
    return {
        "event": "regression" if run.regression else "failed",
        "schedule": {"id": schedule.id, "name": schedule.name},
        "run": {"id": run.id, "fired_at": run.fired_at.isoformat(), "status": run.status, "job_id": run.job_id,
                "flags": run.flags, "reason": run.reason, "weights_sha256": run.weights_sha256,
                "comparison": run.comparison},
        "links": {"runs": f"/api/v1/schedules/{schedule.id}/runs",
                  **({"job": f"/api/v1/jobs/{run.job_id}"} if run.job_id else {})},
    }
