"""Catalog, health and Prometheus metrics."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from agents.events import EVENT_KINDS
from agents.strategies import strategy_models
from search_spaces.datasets import available_datasets
from search_spaces.kinds import CHANNEL_CRITERIA, SPACE_KINDS, WEIGHT_ONLY_CRITERIA, criteria_for
from search_spaces.zoo import available_models
from service.api import examples
from service.api.deps import Reader, SettingsDep, StoreDep
from service.api.metrics import render
from service.config import Settings
from service.pipeline import PHASES
from service.spec import DEMO_JOB, JobSpec, load_spec

router = APIRouter(tags=["system"])


@functools.cache
def demo_defaults() -> dict[str, Any]:
    """The demo job as written (its set fields only): the new-job form's defaults, read once."""
    return load_spec(DEMO_JOB).model_dump(mode="json", exclude_unset=True)


@router.get("/catalog", responses=examples.json_example(examples.CATALOG, "what a job may ask for (abridged)"))
async def catalog(settings: SettingsDep, _: Reader) -> dict[str, Any]:
    """What a job may ask for; the dashboard builds its form from this."""
    schema = JobSpec.model_json_schema()
    strategies = {name: schema["$defs"][model.__name__]["properties"] for name, model in strategy_models().items()}
    return {
        "models": available_models(settings.model_factories),
        "datasets": [d for d in available_datasets() if not d.startswith("imagefolder")],
        "strategies": {name: {k: v for k, v in props.items() if k != "name"} for name, props in strategies.items()},
        "criteria": [*CHANNEL_CRITERIA, *WEIGHT_ONLY_CRITERIA],
        "criteria_by_kind": {kind: criteria_for(kind) for kind in SPACE_KINDS},
        "dimensions": list(SPACE_KINDS),
        "runtimes": schema["$defs"]["DeviceSpec"]["properties"]["runtime"]["enum"],
        "budget_metrics": schema["$defs"]["BudgetSpec"]["properties"]["metric"]["enum"],
        "phases": [{"name": name, "weight": weight} for name, weight in PHASES],
        "events": EVENT_KINDS,
        "defaults": demo_defaults(),
        "devices": await run_in_threadpool(_devices, settings),
    }


def _devices(settings: Settings) -> list[dict[str, Any]]:
    """One entry per (node, device) of the inventory; a job's `device.name`/`device.node` pick from these."""
    from service.config import RayUnavailableError
    from service.inventory import inventory

    try:
        nodes = inventory(settings)
    except RayUnavailableError as exc:
        return [{"name": "cpu", "error": str(exc)}]
    devices: list[dict[str, Any]] = []
    for node in nodes:
        where = {"node": node["ip"], "node_id": node["node_id"], "hostname": node["hostname"],
                 "resources": sorted(node["resources"])}
        cpu_runtimes = [r for r in node["runtimes"] if r != "cuda"]
        devices.append({"name": "cpu", "model": node["cpu_model"], "cores": node["cores"], "runtimes": cpu_runtimes,
                        **where})
        for gpu in node["gpus"]:
            devices.append({"name": gpu["name"], "model": gpu["model"], "memory_gib": gpu["memory_gib"],
                            "runtimes": ["eager", "torchscript"], **where})
    return devices


@router.get("/devices", responses=examples.json_example(examples.DEVICES, "the device inventory"))
async def devices(settings: SettingsDep, _: Reader, fresh: bool = False) -> dict[str, Any]:
    """The device inventory: every node's CPU model, usable cores, GPUs and runtimes, its Ray id, IP and
    custom resources. `fresh=true` skips the short cache. 503 when the configured Ray cluster is unreachable."""
    from service.config import RayUnavailableError
    from service.inventory import inventory

    try:
        nodes = await run_in_threadpool(inventory, settings, fresh)
    except RayUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
    return {"source": "ray" if settings.ray_address else "local", "ray_address": settings.ray_address,
            "nodes": nodes}


@router.get("/healthz", responses={**examples.json_example(examples.HEALTH, "database and Ray reachable"),
                                    503: {"description": "the database or the configured Ray cluster is unreachable"}})
async def healthz(store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """The database answers, and so does the configured Ray cluster ("embedded": started per job here)."""
    db = await run_in_threadpool(store.ping)
    ray_ok: bool | str = "embedded"
    if settings.ray_address:
        ray_ok = await run_in_threadpool(_ray_reachable, settings.ray_address)
    healthy = db and ray_ok is not False
    return JSONResponse({"database": db, "ray": ray_ok}, status_code=200 if healthy else 503)


def _ray_reachable(address: str) -> bool:
    from service.config import RayUnavailableError
    from service.execution.ray_cluster import check_reachable

    try:
        check_reachable(address, timeout=2.0)
    except RayUnavailableError:
        return False
    return True


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"example": examples.METRICS}},
                             "description": "Prometheus text format"}})
async def metrics(store: StoreDep) -> Response:
    """Jobs by status, queue length, evaluations/s over the last minute, job-duration histogram."""
    body = await run_in_threadpool(render, store)
    return Response(body, media_type="text/plain; version=0.0.4")
