"""/jobs: submit, list, inspect, cancel, stream events, fetch results and artifacts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict
from sse_starlette.sse import EventSourceResponse

from service.api import examples
from service.api.deps import BodyLimitRoute, Reader, SettingsDep, StoreDep, Writer, check_active_limit
from service.preflight import check_submission, example_job
from service.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=BodyLimitRoute,  # 413 above max_spec_bytes
                   responses={401: {"description": "no or unknown bearer token"},
                              403: {"description": "a read-only token on a mutating endpoint"},
                              404: {"description": "no such job, or no such artifact (yet)"}})
_checking = asyncio.Semaphore(2)
_submitting = asyncio.Lock()  # count-then-create per token is atomic within this API process
FINAL = {"succeeded", "failed", "cancelled"}
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
MAX_DB_INT = 2**63 - 1  # a larger id or offset overflows the database's integer: 422, not a broken response


class JobOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.JOB]})

    id: str
    name: str | None
    status: Status
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    cancel_requested: bool
    schedule_id: str | None
    links: dict[str, str]
    spec: dict[str, Any] | None = None  # the submitted job spec: the dashboard's model/strategy/budget columns

    @classmethod
    def of(cls, job: Any) -> JobOut:
        base = f"/api/v1/jobs/{job.id}"
        links = {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel", "plan": f"{base}/plan",
                 "history": f"{base}/history", "artifacts": f"{base}/artifacts"}
        return cls(id=job.id, name=job.name, status=job.status, created_at=job.created_at, started_at=job.started_at,
                   finished_at=job.finished_at, progress=job.progress, result=job.result, error=job.error,
                   attempts=job.attempts, cancel_requested=job.cancel_requested, schedule_id=job.schedule_id,
                   links=links, spec=job.spec)


class JobList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [examples.JOB], "total": 1, "limit": 50,
                                                               "offset": 0}]})

    items: list[JobOut]
    total: int
    limit: int
    offset: int


class ArtifactOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.ARTIFACT]})

    name: str
    content_type: str
    size: int
    sha256: str
    url: str


def _job_or_404(store: StoreDep, job_id: str) -> Any:
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return job


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut,
             responses={400: {"description": "valid but unsatisfiable spec"}, 401: {}, 403: {},
                        413: {"description": "spec larger than max_spec_bytes"},
                        429: {"description": "the token has max_active_jobs_per_token jobs queued or running"}})
async def submit(spec: Annotated[JobSpec, Body(openapi_examples={"demo": {"value": example_job()}})],
                 store: StoreDep, settings: SettingsDep, owner: Writer) -> JobOut:
    async with _checking:  # each check builds the model: bound the CPU a burst of submissions can take
        await run_in_threadpool(check_submission, spec, settings)
    async with _submitting:
        await run_in_threadpool(check_active_limit, store, settings, owner)
        job = await run_in_threadpool(store.create_job, spec.model_dump(mode="json"), spec.name, owner)
    return JobOut.of(job)


@router.get("", response_model=JobList)
async def list_jobs(store: StoreDep, _: Reader, status_: Annotated[Status | None, Query(alias="status")] = None,
                    schedule_id: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0) -> JobList:
    jobs, total = await run_in_threadpool(store.list_jobs, status_, schedule_id, limit, offset)
    return JobList(items=[JobOut.of(j) for j in jobs], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, store: StoreDep, _: Reader) -> JobOut:
    return JobOut.of(await run_in_threadpool(_job_or_404, store, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
async def cancel(job_id: str, store: StoreDep, _: Writer) -> JobOut:
    await run_in_threadpool(_job_or_404, store, job_id)
    return JobOut.of(await run_in_threadpool(store.request_cancel, job_id))


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {"example": examples.EVENTS}},
                             "description": "Server-Sent Events"}})
async def events(job_id: str, request: Request, store: StoreDep, _: Reader,
                 last_event_id: Annotated[int | None, Header(ge=0, le=MAX_DB_INT)] = None,
                 after: Annotated[int, Query(ge=0, le=MAX_DB_INT, description="resume after this event id")] = 0,
                 ) -> EventSourceResponse:
    """Every progress event, persisted: a reconnect (Last-Event-ID) or a late viewer replays what it missed."""
    await run_in_threadpool(_job_or_404, store, job_id)
    start = last_event_id if last_event_id is not None else after

    async def stream() -> AsyncIterator[dict[str, str]]:
        last = start
        while not await request.is_disconnected():
            batch = await run_in_threadpool(store.events_after, job_id, last)
            for event in batch:
                last = event.id
                yield {"id": str(event.id), "event": event.type, "data": json.dumps(event.data, default=str)}
            if batch:
                continue
            job = await run_in_threadpool(store.get_job, job_id)
            if job is None or job.status in FINAL:
                if not await run_in_threadpool(store.events_after, job_id, last):
                    yield {"event": "end", "data": json.dumps({"status": job.status if job else "gone"})}
                    return
                continue
            await asyncio.sleep(0.5)

    return EventSourceResponse(stream(), ping=15)


def _artifact_path(store: StoreDep, settings: SettingsDep, job_id: str, name: str) -> tuple[Any, Any]:
    _job_or_404(store, job_id)
    artifact = store.get_artifact(job_id, name)  # only registered names: no path ever comes from the request
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job_id!r} has no artifact {name!r}")
    return artifact, settings.artifact_dir / artifact.path


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
async def list_artifacts(job_id: str, store: StoreDep, _: Reader) -> list[ArtifactOut]:
    await run_in_threadpool(_job_or_404, store, job_id)
    items = await run_in_threadpool(store.artifacts, job_id)
    return [ArtifactOut(name=a.name, content_type=a.content_type, size=a.size, sha256=a.sha256,
                        url=f"/api/v1/jobs/{job_id}/artifacts/{a.name}") for a in items]


@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse, responses={200: {
    "description": "the file with its registered content type",
    "content": {"application/json": {"example": examples.PLAN}, "application/octet-stream": {},
                "application/zip": {}, "application/vnd.sqlite3": {}, "text/plain": {}}}})
async def get_artifact(job_id: str, name: str, store: StoreDep, settings: SettingsDep, _: Reader) -> FileResponse:
    artifact, path = await run_in_threadpool(_artifact_path, store, settings, job_id, name)
    return FileResponse(path, media_type=artifact.content_type, filename=artifact.name)


@router.get("/{job_id}/plan", responses=examples.json_example(examples.PLAN, "the plan (plan.json)"))
async def get_plan(job_id: str, store: StoreDep, settings: SettingsDep, _: Reader) -> Any:
    """The per-layer sparsity plan (404 until the job has succeeded)."""
    _, path = await run_in_threadpool(_artifact_path, store, settings, job_id, "plan.json")
    return json.loads(path.read_text())


@router.get("/{job_id}/history",
            responses=examples.json_example([examples.HISTORY_ROW], "every evaluated candidate, in order"))
async def get_history(job_id: str, store: StoreDep, settings: SettingsDep, _: Reader) -> Any:
    """Every candidate the search evaluated."""
    _, path = await run_in_threadpool(_artifact_path, store, settings, job_id, "history.json")
    return json.loads(path.read_text())
