"""One firing of a schedule -> at most one run, and at most one job.

`fire(schedule_id)` is what APScheduler calls (module level, so its job store can pickle a reference
to it). It works out which fire time it belongs to (the latest the cron produced at or before now)
and claims that (schedule, time) slot in the database first: a second process firing the same time
loses the insert and does nothing. Then it resolves the weights, skips a run whose weights did not
change, seeds the search with the previous best plan, and queues a normal job linked to the schedule.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import structlog

from agents.strategies import takes_warm_start
from service.schedules import cron
from service.schedules.runtime import Runtime, current
from service.schedules.store import Schedule, ScheduleRun
from service.schedules.weights import NoCheckpointError, WeightsSourceError, resolve
from service.spec import SpecError, parse_spec
from service.store.store import utcnow

log = structlog.get_logger()

ON_TIME_S = 60.0  # the most a fire may be late and still count as on time (see on_time_s)
MISSED_RECORDS = 50  # at most this many earlier missed fire times are recorded per catch-up
RECENT_RUNS = 50  # how far back the unchanged-weights and warm-start lookups go


def on_time_s(schedule: Schedule) -> float:
    """How late a fire may start and still count as on time: a tenth of the grace window, 1 s to a minute."""
    return max(1.0, min(schedule.grace_s / 10, ON_TIME_S))


def misfire_grace_s(schedule: Schedule) -> float:
    """APScheduler's misfire_grace_time: run_once runs a fire up to grace_s late, skip only an on-time one."""
    return max(1.0, schedule.grace_s if schedule.missed == "run_once" else on_time_s(schedule))


def fire(schedule_id: str) -> None:
    """APScheduler's entry point for a cron fire."""
    rt = current()
    now = utcnow()
    schedule = rt.schedules.get(schedule_id)
    if schedule is None or schedule.paused:
        log.info("schedule.fire_ignored", schedule=schedule_id, reason="deleted" if schedule is None else "paused")
        return
    fired_at = cron.latest_fire(schedule.cron, schedule.timezone, now) or now
    late = (now - fired_at).total_seconds()
    if late <= on_time_s(schedule):
        launch(rt, schedule, fired_at, "cron")
        return
    record_missed(rt, schedule, fired_at)
    if schedule.missed == "skip" or late > schedule.grace_s:
        missed(rt, schedule, fired_at, now)
        return
    launch(rt, schedule, fired_at, "catch_up", note=f"missed while no scheduler ran; started {late:.0f} s late "
                                                   f"(policy run_once, grace {schedule.grace_s:g} s)")


def missed(rt: Runtime, schedule: Schedule, fired_at: datetime, now: datetime | None = None) -> ScheduleRun | None:
    """Record a fire time that will not run (APScheduler reported it missed, or fire() found it too late)."""
    late = ((now or utcnow()) - fired_at).total_seconds()
    if schedule.missed == "skip":
        reason = f"missed: no scheduler was running at {fired_at.isoformat()} (policy skip, {late:.0f} s late)"
    else:
        reason = f"missed by {late:.0f} s, beyond the grace window of {schedule.grace_s:g} s (policy run_once)"
    run = rt.schedules.claim_run(schedule.id, fired_at, "missed", status="skipped", reason=reason)
    if run is not None:
        log.warning("schedule.missed", schedule=schedule.id, fired_at=fired_at.isoformat(), reason=reason)
    return run


def record_missed(rt: Runtime, schedule: Schedule, until: datetime) -> int:
    """Record the fire times before `until` that never ran (coalesced into the one at `until`)."""
    last = rt.schedules.latest_run(schedule.id, ("starting", "queued", "running", "succeeded", "failed",
                                                 "cancelled", "skipped"))
    since = last.fired_at if last is not None else schedule.created_at
    count = 0
    for when in cron.fires_between(schedule.cron, schedule.timezone, since, until, MISSED_RECORDS):
        if rt.schedules.claim_run(schedule.id, when, "missed", status="skipped",
                                  reason=f"missed: no scheduler was running; coalesced into {until.isoformat()}"):
            count += 1
    return count


def launch(rt: Runtime, schedule: Schedule, fired_at: datetime, trigger: str, *, force: bool = False,
           note: str | None = None) -> ScheduleRun | None:
    """Claim the (schedule, fired_at) slot and start its run; None when another process has it."""
    run = rt.schedules.claim_run(schedule.id, fired_at, trigger, reason=note)
    if run is None:
        log.info("schedule.slot_taken", schedule=schedule.id, fired_at=fired_at.isoformat())
        return None
    try:
        return _start(rt, schedule, run, force, note)
    except Exception as exc:  # a run never stays "starting": every failure is recorded with its reason
        log.exception("schedule.launch_failed", schedule=schedule.id, run=run.id)
        return rt.schedules.update_run(run.id, status="failed", reason=f"{type(exc).__name__}: {exc}")


def _start(rt: Runtime, schedule: Schedule, run: ScheduleRun, force: bool, note: str | None) -> ScheduleRun | None:
    notes = [note] if note else []
    try:
        weights = resolve(schedule.weights, rt.settings)
    except NoCheckpointError as exc:
        return rt.schedules.update_run(run.id, status="skipped", reason=f"weights.{exc.field}: {exc}")
    except (WeightsSourceError, OSError) as exc:
        field = getattr(exc, "field", "path" if "path" in schedule.weights else "upload_id")
        return rt.schedules.update_run(run.id, status="failed", reason=f"weights.{field}: {exc}")
    if schedule.skip_unchanged and not force:
        same = unchanged_since(rt, schedule, run, weights.sha256)
        if same is not None:
            return rt.schedules.update_run(
                run.id, status="skipped", weights_sha256=weights.sha256, weights_ref=str(weights.path),
                reason=f"weights unchanged since run {same.id} ({same.fired_at.isoformat()}, {same.status}); "
                       f"sha256 {weights.sha256[:12]}")
    spec: dict[str, Any] = copy.deepcopy(schedule.job)
    spec.setdefault("model", {})["weights"] = weights.reference
    if schedule.warm_start:
        notes += warm_start(rt, schedule, run, spec)
    try:
        parsed = parse_spec(spec)
    except SpecError as exc:
        return rt.schedules.update_run(run.id, status="failed", reason=f"job template: {exc}",
                                       weights_sha256=weights.sha256, weights_ref=str(weights.path))
    name = f"{schedule.name[:160]} @ {run.fired_at.astimezone(timezone.utc).isoformat(timespec='seconds')}"
    job = rt.jobs.create_job(parsed.model_dump(mode="json"), name, schedule.owner, schedule.id)
    log.info("schedule.fired", schedule=schedule.id, run=run.id, job=job.id, trigger=run.trigger,
             weights=weights.sha256[:12])
    return rt.schedules.update_run(run.id, status="queued", job_id=job.id, weights_sha256=weights.sha256,
                                   weights_ref=str(weights.path), reason="; ".join(notes) or None)


def latest_with_job(rt: Runtime, schedule_id: str, before: datetime, statuses: frozenset[str]
                    ) -> ScheduleRun | None:
    """The latest run fired before `before` whose job is in `statuses`, judged by the job itself (the
    run's own status trails the job's until the next scheduler tick)."""
    for earlier in rt.schedules.runs(schedule_id, limit=RECENT_RUNS):
        if earlier.fired_at >= before or earlier.job_id is None:
            continue
        job = rt.jobs.get_job(earlier.job_id)
        if (job.status if job is not None else earlier.status) in statuses:
            return earlier
    return None


def unchanged_since(rt: Runtime, schedule: Schedule, run: ScheduleRun, sha256: str) -> ScheduleRun | None:
    """The latest earlier run that succeeded (or is still queued/running), if it used these same weights."""
    earlier = latest_with_job(rt, schedule.id, run.fired_at, frozenset({"succeeded", "queued", "running"}))
    return earlier if earlier is not None and earlier.weights_sha256 == sha256 else None


def warm_start(rt: Runtime, schedule: Schedule, run: ScheduleRun, spec: dict[str, Any]) -> list[str]:
    """Seed the search with the previous successful run's plan where the strategy takes one."""
    strategy = spec.get("strategy")
    if not isinstance(strategy, dict) or not takes_warm_start(str(strategy.get("name"))):
        return []
    if strategy.get("warm_start") is not None:
        return ["warm start: the template's own plan"]
    previous = latest_with_job(rt, schedule.id, run.fired_at, frozenset({"succeeded"}))
    if previous is None or previous.job_id is None:
        return []
    plan = job_plan(rt, previous.job_id)
    if plan is None:
        return []
    strategy["warm_start"] = plan
    return [f"warm start: best plan of run {previous.id}"]


def job_plan(rt: Runtime, job_id: str) -> dict[str, float] | None:
    """The chosen plan (group -> ratio) of a finished job, from its plan.json artifact."""
    artifact = rt.jobs.get_artifact(job_id, "plan.json")
    if artifact is None:
        return None
    try:
        data = json.loads((rt.settings.artifact_dir / artifact.path).read_text())
        return {str(g["name"]): float(g["ratio"]) for g in data["groups"]}
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("schedule.plan_unreadable", job=job_id)
        return None


def run_now(rt: Runtime, schedule: Schedule, force: bool = True) -> ScheduleRun | None:
    """POST /schedules/{id}/run: a run at this moment, whatever the cron says (and paused or not)."""
    return launch(rt, schedule, datetime.now(timezone.utc), "manual", force=force)
