"""Catalog, health and Prometheus metrics."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from agents.events import EVENT_KINDS
from agents.strategies import strategy_models
from search_spaces.datasets import available_datasets
from search_spaces.kinds import (
    CHANNEL_CRITERIA,
    GRANULARITIES,
    SPACE_KINDS,
    WEIGHT_ONLY_CRITERIA,
    SpaceKind,
    criteria_for,
)
from search_spaces.layers import SpaceError
from search_spaces.plan import ModelIdentity
from search_spaces.preflight import checked_space
from search_spaces.zoo import UnknownModelError, available_models, build_model
from service.api import examples
from service.api.deps import Reader, SettingsDep, StoreDep
from service.api.metrics import render
from service.config import Settings
from service.pipeline import PHASES
from service.preflight import SpecRefused, catalog_errors, space_refusal
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
        "granularities": {name: info.describe() for name, info in GRANULARITIES.items()},
        "runtimes": schema["$defs"]["DeviceSpec"]["properties"]["runtime"]["enum"],
        "budget_metrics": schema["$defs"]["BudgetSpec"]["properties"]["metric"]["enum"],
        "phases": [{"name": name, "weight": weight} for name, weight in PHASES],
        "events": EVENT_KINDS,
        "defaults": demo_defaults(),
        "devices": await run_in_threadpool(_devices, settings),
    }


@router.get("/catalog/space", responses={
    **examples.json_example(examples.SPACE, "the space a job on ResNet-20 would search (abridged)"),
    400: {"description": "the settings leave nothing to prune; names the field"},
    422: {"description": "an unknown architecture or dimension kind"}})
async def space_preview(settings: SettingsDep, _: Reader, arch: str,
                        num_classes: Annotated[int, Query(ge=2, le=100_000)] = 10,
                        in_channels: Annotated[int, Query(ge=1, le=64)] = 3,
                        input_size: Annotated[int, Query(ge=4, le=1024)] = 32,
                        dimensions: Annotated[list[SpaceKind] | None, Query()] = None,
                        round_to: Annotated[int, Query(ge=1, le=1024)] = 1,
                        max_ratio: Annotated[float, Query(gt=0, lt=1)] = 0.9) -> dict[str, Any]:
    """The pruning space a job on `arch` would search, built by the submission preflight on an untrained model
    (structure, not weights, decides it): its dimensions, and the layers left unpruned with the reason."""
    problems = catalog_errors({"model": {"arch": arch}}, settings)
    if problems:
        raise SpecRefused("invalid", [(("arch",), msg) for _, msg in problems], "query")
    return await run_in_threadpool(_space, settings, arch, num_classes, in_channels, input_size,
                                   tuple(dimensions or ["channel"]), round_to, max_ratio)


def _space(settings: Settings, arch: str, num_classes: int, in_channels: int, input_size: int,
           dimensions: tuple[str, ...], round_to: int, max_ratio: float) -> dict[str, Any]:
    identity = ModelIdentity(arch=arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    try:
        space = checked_space(build_model(identity, settings.model_factories), identity, round_to=round_to,
                              max_ratio=max_ratio, dimensions=dimensions)
    except UnknownModelError as exc:  # e.g. torchvision:<a name torchvision lacks>
        raise SpecRefused("invalid", [(("arch",), str(exc).removeprefix("model.arch: "))], "query") from exc
    except SpaceError as exc:
        loc, msg = space_refusal(exc)
        raise SpecRefused("unsatisfiable", [((loc,), msg)], "query") from exc
    except Exception as exc:  # a model that does not even run on this input: the user's to fix, said plainly
        raise SpecRefused("unsatisfiable", [(("arch",), f"{arch} cannot be built or run on a {in_channels}x"
                                             f"{input_size}x{input_size} input: {exc}")], "query") from exc
    return {"arch": arch, "macs": space.flops, "params": space.params,
            "dimensions": [{"name": d.name, "granularity": d.granularity, "units": d.units, "min_kept": d.min_kept,
                            "members": list(d.members)} for d in space.dimensions],
            "excluded": dict(space.excluded)}


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
