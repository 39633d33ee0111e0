"""The FastAPI application: routers under /api/v1, the job runner started with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import dashboard
from service.api.routers import jobs, schedules, system, weights
from service.config import Settings
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
    for router in (jobs.router, weights.router, system.router, schedules.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(dashboard.router)  # the web dashboard at /, outside the API
    return app
