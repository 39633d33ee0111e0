"""Evaluate candidates on Ray: accuracy actors on every free core, one exclusive latency actor per device.

The base model, the pruning space and the data are put into the object store once per job; each
accuracy actor deserializes them once and then scores any number of plans. Latency is timed only
by the latency actor, which owns its cores: it reserves them as Ray CPUs plus the per-node
`LATENCY_RESOURCE` (so at most one timing runs per device), pins itself to them, and the accuracy
actors pin themselves to the node's *other* cores, so no accuracy work runs on the cores being
timed. Torch threads are set inside every call, since a reused worker keeps its old thread pool.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import ray
import structlog
import torch
from ray.util import ActorPool

from agents.base import Candidate, Evaluation
from agents.budget import Budget
from measurement.evaluator import AccuracyRecipe, AccuracyResult, DeviceTimer, assemble, score_accuracy
from measurement.latency import LatencyMeter, MeterSettings, RatioStats, pinned
from measurement.lut import LatencyTable
from search_spaces.datasets import DataSplits
from search_spaces.space import PruningSpace
from service.config import RayUnavailableError

log = structlog.get_logger()
LATENCY_RESOURCE = "prunesearch_latency"


def _probe(address: str, timeout: float = 3.0) -> None:
    """Fail fast on a dead host:port; `ray.init` would otherwise retry for minutes."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and friends: Ray resolves these itself and fails quickly
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailableError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from exc


def connect(address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Join the cluster at `address` ("auto", "host:port", "ray://…"), or start an embedded one."""
    if not ray.is_initialized():
        if address:
            _probe(address)
        try:
            if address:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                cpus = num_cpus or os.cpu_count() or 1
                ray.init(address="local", num_cpus=cpus, resources={LATENCY_RESOURCE: 1}, include_dashboard=False,
                         log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailableError(f"cannot reach Ray at {address or 'local'}: {exc}") from exc
    return ray.cluster_resources()


@ray.remote
class AccuracyActor:
    def __init__(self, space: PruningSpace, data: DataSplits, recipe: AccuracyRecipe,
                 avoid_cores: Sequence[int]) -> None:
        self.space, self.data, self.recipe = space, data, recipe
        free = sorted(os.sched_getaffinity(0) - set(avoid_cores))
        self.cores = free or None

    def score(self, cand: Candidate) -> AccuracyResult:
        torch.set_num_threads(1)
        with pinned(self.cores):
            return score_accuracy(self.space, self.data, cand, self.recipe)

    def pinned_cores(self) -> list[int] | None:
        return self.cores


@ray.remote
class LatencyActor:
    def __init__(self, space: PruningSpace, settings: MeterSettings) -> None:
        self.timer = DeviceTimer(space, LatencyMeter(settings))

    def ratio(self, ratios: dict[str, float]) -> RatioStats:
        return self.timer.ratio(ratios)

    def cores(self) -> list[int]:
        return list(self.timer.meter.settings.pinned_cores())


class RayEvaluator:
    def __init__(self, space: PruningSpace, data: DataSplits, budget: Budget, recipe: AccuracyRecipe,
                 settings: MeterSettings | None, lut: LatencyTable | None = None,
                 accuracy_workers: int | None = None) -> None:
        self.space, self.budget, self.lut = space, budget, lut
        space_ref, data_ref = ray.put(space), ray.put(data)
        self._refs = (space_ref, data_ref)  # actors re-read these on restart: keep them alive
        self.latency = None
        timed_cores: list[int] = []
        if budget.measured:
            if settings is None:
                raise ValueError("a latency budget needs meter settings")
            needs = {"num_cpus": settings.threads}
            if ray.cluster_resources().get(LATENCY_RESOURCE):
                needs["resources"] = {LATENCY_RESOURCE: 1}  # type: ignore[assignment]
            self.latency = LatencyActor.options(**needs, max_restarts=2, max_task_retries=2).remote(  # type: ignore[attr-defined]
                space_ref, settings)
            timed_cores = ray.get(self.latency.cores.remote())
        total = int(ray.cluster_resources().get("CPU", 1))
        n = accuracy_workers or max(1, total - (settings.threads if self.latency and settings else 0))
        self.workers = [AccuracyActor.options(num_cpus=1, max_restarts=2, max_task_retries=2).remote(  # type: ignore[attr-defined]
            space_ref, data_ref, recipe, timed_cores) for _ in range(n)]
        self.pool = ActorPool(self.workers)
        log.info("ray.evaluator", accuracy_workers=n, latency_actor=self.latency is not None, timed_cores=timed_cores)

    def __call__(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        start = time.perf_counter()
        timing = {c.id: self.latency.ratio.remote(dict(c.ratios))  # queued: the actor times one plan at a time
                  for c in candidates if self.latency is not None and c.latency == "measured"}
        accs = list(self.pool.map(lambda actor, c: actor.score.remote(c), list(candidates)))
        out = []
        for cand, acc in zip(candidates, accs, strict=True):
            measured = ray.get(timing[cand.id]) if cand.id in timing else None
            out.append(assemble(cand, acc, self.budget, measured, self.lut, self.space,
                                (time.perf_counter() - start) / len(candidates)))
        return out

    def shutdown(self) -> None:
        for actor in [*self.workers, *([self.latency] if self.latency is not None else [])]:
            ray.kill(actor)
