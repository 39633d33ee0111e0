"""Catalog, health and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from agents.registry import AGENTS
from search_spaces.criteria import DATA_DRIVEN, DATA_FREE
from search_spaces.datasets import available_datasets
from search_spaces.zoo import available_models
from service.api.deps import Reader, SettingsDep, StoreDep
from service.api.metrics import render
from service.spec import JobSpec

router = APIRouter(tags=["system"])


@router.get("/catalog")
async def catalog(settings: SettingsDep, _: Reader) -> dict[str, Any]:
    """What a job may ask for; the dashboard builds its form from this."""
    schema = JobSpec.model_json_schema()
    strategies = {name: schema["$defs"][cls]["properties"] for name, cls in
                  (("uniform", "BisectionStrategy"), ("global", "BisectionStrategy"),
                   ("sensitivity", "SensitivityStrategy"), ("netadapt", "NetAdaptStrategy"), ("amc", "AMCStrategy"),
                   ("optuna", "OptunaStrategy"))}
    return {
        "models": available_models(settings.model_factories),
        "datasets": [d for d in available_datasets() if not d.startswith("imagefolder")],
        "strategies": {name: {k: v for k, v in props.items() if k != "name"} for name, props in strategies.items()
                       if name in AGENTS},
        "criteria": list(DATA_FREE + DATA_DRIVEN),
        "runtimes": ["eager", "torchscript", "onnxruntime"],
        "budget_metrics": ["latency_ms", "flops", "params"],
        "devices": _devices(),
    }


def _devices() -> list[dict[str, Any]]:
    import os

    import torch

    from measurement.latency import cpu_model

    devices: list[dict[str, Any]] = [{"name": "cpu", "model": cpu_model(), "cores": len(os.sched_getaffinity(0)),
                                      "runtimes": ["eager", "torchscript", "onnxruntime"]}]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append({"name": f"cuda:{i}", "model": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                        "runtimes": ["eager", "torchscript"]})
    return devices


@router.get("/healthz")
async def healthz(store: StoreDep) -> Response:
    ok = await run_in_threadpool(store.ping)
    return Response(content='{"database": %s}' % ("true" if ok else "false"), media_type="application/json",
                    status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(store: StoreDep) -> Response:
    """Jobs by status, queue length, evaluations/s over the last minute, job-duration histogram."""
    body = await run_in_threadpool(render, store)
    return Response(body, media_type="text/plain; version=0.0.4")
