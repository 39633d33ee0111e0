"""/schedules: nightly (or any cron) searches on weights that training keeps updating.

422 names the bad field (cron, timezone, job.<field>, weights); 400 a valid request the server
refuses (a weights path outside the operator's roots, an unknown upload, a template the server
cannot run). Reads need the Reader dependency, changes the Writer one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.api import examples
from service.api.deps import BodyLimitRoute, Reader, SettingsDep, StoreDep, Writer
from service.config import Settings
from service.preflight import SpecRefused, check_submission, unsatisfiable
from service.schedules import cron
from service.schedules.launch import run_now
from service.schedules.runtime import Runtime
from service.schedules.store import OPEN, Schedule, ScheduleRun, ScheduleStore
from service.schedules.weights import WeightsSourceError, check_source
from service.spec import JobSpec, Strict
from service.store import JobStore

router = APIRouter(prefix="/schedules", tags=["schedules"], route_class=BodyLimitRoute)


class WeightsSource(Strict):
    """Exactly one of: a checkpoint file or a folder training writes into (newest *.safetensors), or an upload."""

    path: str | None = Field(None, min_length=1, max_length=4096, examples=["/checkpoints/resnet20"])
    upload_id: str | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _exactly_one(self) -> WeightsSource:
        if (self.path is None) == (self.upload_id is None):
            raise ValueError('give exactly one of "path" or "upload_id"')
        return self

    def source(self) -> dict[str, str]:
        return {"path": self.path} if self.path is not None else {"upload_id": str(self.upload_id)}


class Thresholds(Strict):
    accuracy_drop: float = Field(0.01, ge=0, le=1, description="flag a test-accuracy drop above this (0.01 = 1 pt)")
    latency_rise: float = Field(0.10, ge=0, le=100, description="flag a measured-latency rise above this (0.1 = 10%)")
    budget_miss: bool = Field(True, description="flag a run whose returned model misses its budget")


class ScheduleIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(min_length=1, max_length=200, examples=["0 2 * * *", "*/30 * * * * *"],
                      description="5 crontab fields (0/7 = Sunday), or 6 with seconds first")
    timezone: str = Field("UTC", min_length=1, max_length=64, examples=["Europe/Berlin"])
    job: JobSpec = Field(description="the job spec template; model.weights comes from `weights`")
    weights: WeightsSource
    paused: bool = False
    missed: Literal["run_once", "skip"] = Field("run_once", description="fires missed while no scheduler ran: run "
                                                                        "the latest once within grace_s, or skip")
    grace_s: float = Field(3600.0, gt=0, le=7 * 86400)
    skip_unchanged: bool = Field(True, description="skip a run whose weights did not change since the last success")
    warm_start: bool = Field(True, description="seed the search with the previous run's plan (optuna)")
    thresholds: Thresholds = Thresholds()
    webhook_url: str | None = Field(None, max_length=2000)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        cron.zone(v)
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        cron.trigger(v, "UTC")
        return " ".join(v.split())

    @field_validator("job")
    @classmethod
    def _no_weights(cls, v: JobSpec) -> JobSpec:
        if v.model.weights is not None:
            raise ValueError("job.model.weights must be left out: the schedule's `weights` source supplies it")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname):
            raise ValueError("an http:// or https:// URL")
        return v


class SchedulePatch(Strict):
    """Any subset of the fields of a schedule; the merged schedule is validated as a whole."""

    name: str | None = None
    cron: str | None = None
    timezone: str | None = None
    job: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None
    paused: bool | None = None
    missed: str | None = None
    grace_s: float | None = None
    skip_unchanged: bool | None = None
    warm_start: bool | None = None
    thresholds: dict[str, Any] | None = None
    webhook_url: str | None = None


class ScheduleOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.SCHEDULE]})

    id: str
    name: str
    cron: str
    timezone: str
    paused: bool
    weights: dict[str, Any]
    job: dict[str, Any]
    missed: str
    grace_s: float
    skip_unchanged: bool
    warm_start: bool
    thresholds: dict[str, Any]
    webhook_url: str | None
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    owner: str | None
    links: dict[str, str]

    @classmethod
    def of(cls, s: Schedule) -> ScheduleOut:
        next_at = None if s.paused else cron.next_fire(s.cron, s.timezone, datetime.now(timezone.utc))
        base = f"/api/v1/schedules/{s.id}"
        return cls(id=s.id, name=s.name, cron=s.cron, timezone=s.timezone, paused=s.paused, weights=s.weights,
                   job=s.job, missed=s.missed, grace_s=s.grace_s, skip_unchanged=s.skip_unchanged,
                   warm_start=s.warm_start, thresholds=s.thresholds, webhook_url=s.webhook_url,
                   next_run_at=next_at, last_run_at=s.last_run_at, created_at=s.created_at, updated_at=s.updated_at,
                   owner=s.owner, links={"self": base, "runs": f"{base}/runs", "run": f"{base}/run"})


class ScheduleList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [examples.SCHEDULE]}]})

    items: list[ScheduleOut]


class RunOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.RUN]})

    id: str
    schedule_id: str
    job_id: str | None
    status: str
    reason: str | None
    trigger: str
    fired_at: datetime
    weights_sha256: str | None
    weights_ref: str | None
    comparison: dict[str, Any] | None
    regression: bool
    flags: list[str]
    webhook: dict[str, Any] | None

    @classmethod
    def of(cls, r: ScheduleRun, jobs: JobStore | None = None) -> RunOut:
        status_ = r.status
        if r.status in OPEN and r.job_id and jobs is not None:  # fresher than the last scheduler tick
            job = jobs.get_job(r.job_id)
            status_ = job.status if job is not None else status_
        return cls(id=r.id, schedule_id=r.schedule_id, job_id=r.job_id, status=status_, reason=r.reason,
                   trigger=r.trigger, fired_at=r.fired_at, weights_sha256=r.weights_sha256,
                   weights_ref=r.weights_ref, comparison=r.comparison, regression=r.regression, flags=r.flags,
                   webhook=r.webhook)


class RunList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [examples.RUN]}]})

    items: list[RunOut]


def _schedules(request: Request) -> ScheduleStore:
    store: ScheduleStore | None = getattr(request.app.state, "schedules", None)
    if store is None:
        store = request.app.state.schedules = ScheduleStore.of(request.app.state.store)
    return store


def _sync(request: Request) -> None:
    """Tell this process's scheduler at once (other processes' schedulers pick changes up on their tick)."""
    host = getattr(request.app.state, "scheduler", None)
    if host is not None and host.running:
        host.sync()


def _get(request: Request, schedule_id: str) -> Schedule:
    schedule = _schedules(request).get(schedule_id)
    if schedule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id!r}")
    return schedule


def _parse(data: dict[str, Any]) -> ScheduleIn:
    """Validate a merged schedule (PATCH) as FastAPI would a body: 422 with each field's location."""
    try:
        return ScheduleIn.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _job_loc(source: dict[str, str]) -> Callable[[tuple[str | int, ...]], tuple[str | int, ...]]:
    """Where a check_submission problem lives in a schedule: under `job` (weights problems under `weights`)."""
    def relocate(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
        return ("weights", *source) if loc[:2] == ("model", "weights") else ("job", *loc)
    return relocate


def _validated(body: ScheduleIn, settings: Settings) -> dict[str, Any]:
    """What the server checks beyond the schema (as for POST /jobs); the fields to store."""
    source = body.weights.source()
    try:
        check_source(source, settings)
    except WeightsSourceError as exc:
        raise unsatisfiable(f"weights.{exc.field}", str(exc)) from None
    host = urlsplit(body.webhook_url).hostname if body.webhook_url else None
    if host is not None and settings.webhook_hosts and host not in settings.webhook_hosts:
        raise unsatisfiable("webhook_url",
                            f"host {host!r} not allowed; this server posts only to {settings.webhook_hosts}")
    probe = body.job
    if "upload_id" in source:  # uploaded weights must fit the model now; a folder's are checked per run
        probe = probe.model_copy(update={"model": probe.model.model_copy(
            update={"weights": f"upload:{source['upload_id']}"})})
    try:
        check_submission(probe, settings)
    except SpecRefused as exc:
        raise exc.moved(_job_loc(source)) from None
    return {"name": body.name, "cron": body.cron, "timezone": body.timezone, "paused": body.paused,
            "weights": source, "job": body.job.model_dump(mode="json", exclude_unset=True),
            "missed": body.missed, "grace_s": body.grace_s, "skip_unchanged": body.skip_unchanged,
            "warm_start": body.warm_start, "thresholds": body.thresholds.model_dump(),
            "webhook_url": body.webhook_url}


@router.get("", response_model=ScheduleList)
async def list_schedules(request: Request, _: Reader) -> ScheduleList:
    items = await run_in_threadpool(_schedules(request).all)
    return ScheduleList(items=[ScheduleOut.of(s) for s in items])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleOut,
             responses={400: {"description": "weights source refused or template not runnable here"}})
async def create_schedule(body: ScheduleIn, request: Request, settings: SettingsDep, owner: Writer) -> ScheduleOut:
    fields = await run_in_threadpool(_validated, body, settings)
    schedule = await run_in_threadpool(lambda: _schedules(request).create(**fields, owner=owner))
    await run_in_threadpool(_sync, request)
    return ScheduleOut.of(schedule)


@router.get("/{schedule_id}", response_model=ScheduleOut)
async def get_schedule(schedule_id: str, request: Request, _: Reader) -> ScheduleOut:
    return ScheduleOut.of(await run_in_threadpool(_get, request, schedule_id))


@router.patch("/{schedule_id}", response_model=ScheduleOut)
async def update_schedule(schedule_id: str, patch: SchedulePatch, request: Request, settings: SettingsDep,
                          _: Writer) -> ScheduleOut:
    current = await run_in_threadpool(_get, request, schedule_id)
    changes = patch.model_dump(exclude_unset=True)
    merged = {k: getattr(current, k) for k in ScheduleIn.model_fields} | changes
    if isinstance(changes.get("thresholds"), dict):
        merged["thresholds"] = {**current.thresholds, **changes["thresholds"]}
    fields = await run_in_threadpool(_validated, _parse(merged), settings)
    schedule = await run_in_threadpool(lambda: _schedules(request).update(schedule_id, **fields))
    if schedule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id!r}")
    await run_in_threadpool(_sync, request)
    return ScheduleOut.of(schedule)


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_schedule(schedule_id: str, request: Request, _: Writer) -> Response:
    if not await run_in_threadpool(_schedules(request).delete, schedule_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id!r}")
    await run_in_threadpool(_sync, request)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _set_paused(request: Request, schedule_id: str, paused: bool) -> ScheduleOut:
    await run_in_threadpool(_get, request, schedule_id)
    schedule = await run_in_threadpool(lambda: _schedules(request).update(schedule_id, paused=paused))
    if schedule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id!r}")
    await run_in_threadpool(_sync, request)
    return ScheduleOut.of(schedule)


@router.post("/{schedule_id}/pause", response_model=ScheduleOut)
async def pause(schedule_id: str, request: Request, _: Writer) -> ScheduleOut:
    return await _set_paused(request, schedule_id, True)


@router.post("/{schedule_id}/resume", response_model=ScheduleOut)
async def resume(schedule_id: str, request: Request, _: Writer) -> ScheduleOut:
    return await _set_paused(request, schedule_id, False)


@router.post("/{schedule_id}/run", status_code=status.HTTP_201_CREATED, response_model=RunOut)
async def run(schedule_id: str, request: Request, store: StoreDep, settings: SettingsDep, _: Writer,
              force: Annotated[bool, Query(description="run even if the weights did not change")] = True) -> RunOut:
    """Run now, whatever the cron says (a paused schedule too). The run may come back skipped or failed
    with its reason (no checkpoint yet, weights unchanged with force=false)."""
    schedule = await run_in_threadpool(_get, request, schedule_id)
    rt = Runtime(settings, store, _schedules(request))
    created = await run_in_threadpool(run_now, rt, schedule, force)
    if created is None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="a run for this instant already exists; retry")
    return RunOut.of(created)


@router.get("/{schedule_id}/runs", response_model=RunList)
async def list_runs(schedule_id: str, request: Request, store: StoreDep, _: Reader,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> RunList:
    await run_in_threadpool(_get, request, schedule_id)
    runs = await run_in_threadpool(_schedules(request).runs, schedule_id, limit)
    return RunList(items=await run_in_threadpool(lambda: [RunOut.of(r, store) for r in runs]))
