"""The FastAPI application: routers under /api/v1, the job runner started with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from service import dashboard
from service.api.deps import error_items, spec_refused
from service.api.routers import jobs, schedules, system, weights
from service.config import Settings
from service.preflight import SpecRefused, catalog_errors
from service.runner import JobRunner
from service.schedules import metrics as schedule_metrics
from service.schedules.scheduler import SchedulerHost
from service.store import JobStore

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, run_jobs: bool = True) -> FastAPI:
    settings = settings or Settings()
    store = JobStore(settings.database_url)
    store.migrate()
    settings.artifact_dir.mkdir(parents=True, exist_ok=True)
    runner = JobRunner(settings, store) if run_jobs else None
    # One scheduler per database: embedded here unless the operator runs `prunesearch scheduler` instead.
    scheduler = SchedulerHost(settings, store) if run_jobs and settings.scheduler == "embedded" else None
    schedule_metrics.register()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.start()
        if scheduler is not None:
            scheduler.start()
        yield
        if scheduler is not None:
            scheduler.stop()
        if runner is not None:
            runner.stop()

    app = FastAPI(title="prunesearch", version="0.1.0", lifespan=lifespan,
                  description="Pruning-ratio search under a measured latency budget.")
    app.state.settings, app.state.store, app.state.runner = settings, store, runner
    app.state.scheduler = scheduler
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.add_exception_handler(RequestValidationError, validation_failed)  # type: ignore[arg-type]
    app.add_exception_handler(SpecRefused, spec_refused)  # type: ignore[arg-type]
    for router in (jobs.router, weights.router, system.router, schedules.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(dashboard.router)  # the web dashboard at /, outside the API
    return app


NOT_JSON = ("the request body must be a JSON object (Content-Type: application/json); YAML job files are "
            "converted by `prunesearch submit`")


def body_errors(errors: list[dict[str, Any]], body: Any, request: Request) -> list[dict[str, Any]]:
    """One 422 that names every invalid field: the schema's errors plus, for a job spec, the catalog's
    (an unknown `model.arch` is no schema error, so FastAPI alone would drop it). A body that is not a
    JSON object (YAML, say) gets one short message instead of being echoed back."""
    whole = [e for e in errors if list(e.get("loc", ())) == ["body"] or e.get("type") == "json_invalid"]
    if whole and not isinstance(body, dict):
        return [{"loc": ["body"], "msg": NOT_JSON, "type": "value_error"}]
    out = [{k: v for k, v in e.items() if k != "input" or list(e.get("loc", ())) != ["body"]} for e in errors]
    if request.method == "POST" and request.url.path == f"{API_PREFIX}/jobs" and isinstance(body, dict):
        seen = {tuple(e.get("loc", ())) for e in out}
        found = error_items(catalog_errors(body, request.app.state.settings))
        out += [e for e in found if tuple(e["loc"]) not in seen]
    return out


async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = body_errors(list(exc.errors()), exc.body, request)
    return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
