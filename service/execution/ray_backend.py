"""Evaluate candidates on Ray: accuracy actors on every free core, one exclusive latency actor per device.

Object store: the base model (inside the pruning space) and the data are `ray.put` once per job;
each accuracy actor deserializes them once and then scores any number of plans (a restarted or
replacement actor re-reads the same refs). Torch threads are set inside every call, since a reused
worker keeps its old thread pool.

Exclusivity rule: while a timing of the job runs, no accuracy work of the job runs on the node
being timed. Pinning to disjoint cores is not enough (shared caches and memory bandwidth moved a
ResNet-20 ratio from 0.533 to 0.48-0.50 on a 2-core VM), so each batch is dispatched with a gate:
the candidate's timings are queued on the latency actor first, and every accuracy call carries the
latency actor's node id while any timing of the batch is outstanding. An accuracy actor that finds
itself on that node returns at once without scoring, is parked, and its candidate is re-queued
until the timings are done. Actors on other nodes keep scoring (measure on the target, search
anywhere); on a single node this is plain phase separation (timings, then accuracy).

Lent cores: since the gate already keeps accuracy off the latency node while it times, the timed
cores would sit idle through every accuracy phase. With `accuracy_workers` left to the default, one
accuracy actor per timed core is placed on the latency node (`num_cpus=0`: it borrows the latency
actor's reservation), pinned to that core, and gated like any other. On 2 cores that halves an
accuracy-only phase (MobileNetV2's HALP sensitivity scan: 51 evaluations, 957 of a 1080 s search
on one core). The latency actor's own process never scores: a process that has trained and scored
times the same plan up to 10% slower (`RayExecution.time`).

Across jobs, Ray resources keep timings apart: a CPU latency actor reserves `threads` CPUs plus one
`prunesearch_latency` per node (the embedded cluster declares it; on `ray start` clusters add
`--resources '{"prunesearch_latency": 1}'`), a GPU one reserves `num_gpus=1` and times with CUDA
events. Another job's accuracy work on the same node is not gated: run one job at a time
(`max_concurrent_jobs=1`, the default) where latency numbers matter.

Faults: a dead accuracy actor (process killed, node lost) fails its call at once (no Ray-side
restart, which would hold the call until a CPU frees up, forever if the node is gone); the evaluator
gives the candidate to another actor and starts a replacement that joins the pool once Ray places
it, so the agent sees every candidate's result exactly once. The latency actor restarts in place
and retries (`max_restarts=3`, `max_task_retries=3`): its device is where it must run.

Cancel: `should_stop` (the execution's flag: the worker raises it on a cancel request) is polled
while waiting; once it is up the evaluator `ray.cancel`s its outstanding calls, kills its actors and
raises `EvaluationCancelled`. A timing task is cancelled the same way.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any

import ray
import structlog
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.base import Candidate, Evaluation
from agents.budget import Budget
from measurement.latency import LatencyMeter, MeterSettings, RatioStats, pinned
from measurement.lut import LatencyTable
from search_spaces.datasets import DataSplits
from search_spaces.space import PruningSpace
from service.execution.base import EvaluationCancelled, Execution, StopFn
from service.execution.evaluation import AccuracyRecipe, AccuracyResult, DeviceTimer, assemble, score_accuracy
from service.execution.ray_cluster import LATENCY_RESOURCE, connect
from service.inventory import cluster_inventory, node_matches

log = structlog.get_logger()
MAX_RESUBMITS = 3  # per candidate, on top of Ray's own retries: a plan that kills every actor is a bug
POLL_S = 0.25  # how often a waiting evaluator looks at the cancel flag
Span = tuple[float, float, str]  # (start, end, node id) in wall-clock seconds, for the exclusivity checks


def _node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


def actor_settings(settings: MeterSettings, gpu_ids: Sequence[Any]) -> MeterSettings:
    """The meter settings as seen inside a GPU actor: Ray shows it only its assigned GPU, as cuda:0."""
    if settings.is_cuda and len(gpu_ids) == 1 and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return replace(settings, device="cuda:0")
    return settings


@ray.remote
class AccuracyActor:
    def __init__(self, space: PruningSpace, data: DataSplits, recipe: AccuracyRecipe,
                 avoid: tuple[str, Sequence[int]] | None, lent: Sequence[int] | None = None) -> None:
        """Pinned off the timed cores `avoid` names on this node, or onto the `lent` ones."""
        self.space, self.data, self.recipe = space, data, recipe
        self.node = _node_id()
        taken = set(avoid[1]) if avoid is not None and avoid[0] == self.node else set()
        self.cores = list(lent) if lent else sorted(os.sched_getaffinity(0) - taken) or None
        self._spans: list[Span] = []

    def score(self, cand: Candidate, gate: str | None = None) -> AccuracyResult | None:
        """Score a candidate, or return None at once when a timing is running on this node (`gate`)."""
        if gate == self.node:
            return None
        torch.set_num_threads(1)
        start = time.time()
        with pinned(self.cores):
            result = score_accuracy(self.space, self.data, cand, self.recipe)
        self._spans.append((start, time.time(), self.node))
        return result

    def pinned_cores(self) -> list[int] | None:
        return self.cores

    def where(self) -> tuple[str, int]:
        return self.node, os.getpid()

    def spans(self) -> list[Span]:
        return self._spans


@ray.remote
class LatencyActor:
    def __init__(self, space: PruningSpace, settings: MeterSettings) -> None:
        self.timer = DeviceTimer(space, LatencyMeter(actor_settings(settings, ray.get_gpu_ids())))
        self.node = _node_id()
        self._spans: list[Span] = []

    def ratio(self, ratios: dict[str, float]) -> RatioStats:
        start = time.time()
        try:
            return self.timer.ratio(ratios)
        finally:
            self._spans.append((start, time.time(), self.node))

    def cores(self) -> list[int]:
        return list(self.timer.meter.settings.pinned_cores())

    def where(self) -> tuple[str, int]:
        return self.node, os.getpid()

    def spans(self) -> list[Span]:
        return self._spans


def latency_placement(settings: MeterSettings, node: str | None) -> dict[str, Any]:
    """Ray options that put the latency actor on a node with the device, exclusively.

    `node` is a custom resource name (any node declaring it), or a node id, IP or hostname (that node)."""
    opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": 1} if settings.is_cuda else {"num_cpus": settings.threads}
    resources: dict[str, float] = {}
    if not settings.is_cuda and ray.cluster_resources().get(LATENCY_RESOURCE):
        resources[LATENCY_RESOURCE] = 1
    if node is not None:
        nodes = [n for n in cluster_inventory() if node_matches(n, node)]
        if not nodes:
            raise ValueError(f"device.node: no node of the cluster matches {node!r}")
        if node in nodes[0]["resources"]:
            resources[node] = 0.001  # any node declaring the resource; a restart may land on another one
        else:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(nodes[0]["node_id"], soft=False)
    if resources:
        opts["resources"] = resources
    return opts


@ray.remote
def _timed(fn: Callable[..., Any], settings: MeterSettings, *args: Any) -> tuple[Any, str]:
    return fn(LatencyMeter(actor_settings(settings, ray.get_gpu_ids())), *args), _node_id()


def time_on_device(fn: Callable[..., Any], settings: MeterSettings, node: str | None, *args: Any,
                   should_stop: StopFn | None = None) -> tuple[Any, str]:
    """`fn(meter, *args)` run where the job's candidates are timed (the latency node, exclusively), so base
    latency, lookup table and final re-measure come from the same device as every candidate's ratio.
    Returns the result and the Ray node id it ran on; cancelled (and raises) once `should_stop` says so."""
    ref = _timed.options(**latency_placement(settings, node)).remote(fn, settings, *args)
    while not ray.wait([ref], timeout=POLL_S)[0]:
        if should_stop is not None and should_stop():
            with suppress(Exception):  # finished meanwhile: nothing left to cancel
                ray.cancel(ref, force=True)
            raise EvaluationCancelled("the job was stopped during a timing")
    result: tuple[Any, str] = ray.get(ref)
    return result


class RayExecution(Execution):
    """Timings on a worker of the latency node, accuracy on actors across the cluster."""

    def __init__(self, meter: LatencyMeter, should_stop: StopFn | None, address: str | None, node: str | None,
                 accuracy_workers: int | None) -> None:
        super().__init__(meter, should_stop)
        connect(address)
        self.node, self.accuracy_workers = node, accuracy_workers

    def time(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
        """On a worker of the latency node, never this process: a job's driver has trained and scored, and
        the same plan measured up to 10% slower here than in a process that only times (0.522 vs 0.474),
        which made returned plans miss budgets the search had seen them meet."""
        return time_on_device(fn, self.meter.settings, self.node, *args, should_stop=self.should_stop)

    def _evaluator(self, space: PruningSpace, data: DataSplits, budget: Budget, recipe: AccuracyRecipe,
                   lut: LatencyTable | None) -> RayEvaluator:
        return RayEvaluator(space, data, budget, recipe, self.meter.settings if budget.measured else None, lut,
                            self.accuracy_workers, node=self.node, should_stop=self.should_stop)


class RayEvaluator:
    def __init__(self, space: PruningSpace, data: DataSplits, budget: Budget, recipe: AccuracyRecipe,
                 settings: MeterSettings | None, lut: LatencyTable | None = None,
                 accuracy_workers: int | None = None, node: str | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.space, self.budget, self.lut, self.recipe = space, budget, lut, recipe
        self.should_stop = should_stop or (lambda: False)
        self._refs = (ray.put(space), ray.put(data))  # actors re-read these on restart: keep them alive
        self.latency: Any = None
        self.latency_node: str | None = None
        avoid: tuple[str, list[int]] | None = None
        if budget.measured:
            if settings is None:
                raise ValueError("a latency budget needs meter settings")
            self.latency = LatencyActor.options(  # type: ignore[attr-defined]
                **latency_placement(settings, node), max_restarts=3, max_task_retries=3).remote(self._refs[0], settings)
            self.latency_node = ray.get(self.latency.where.remote())[0]
            if not settings.is_cuda:
                avoid = (self.latency_node, ray.get(self.latency.cores.remote()))
        self._avoid = avoid
        reserved = settings.threads if self.latency is not None and settings and not settings.is_cuda else 0
        n = accuracy_workers or max(1, int(ray.cluster_resources().get("CPU", 1)) - reserved)
        self.workers = [self._new_worker() for _ in range(n)]
        self._lent: list[tuple[Any, int]] = []  # (actor, timed core it is pinned to)
        if avoid is not None and accuracy_workers is None:  # lent cores (module docstring)
            self._lent = [(self._lent_worker(core), core) for core in avoid[1]]
            self.workers += [actor for actor, _ in self._lent]
        # readiness ref -> actor not yet placed by Ray: an actor joins the pool once placed, so asking for more
        # workers than the cluster can hold (or a replacement waiting for a CPU) never stalls a batch
        self._joining: dict[Any, Any] = {w.where.remote(): w for w in self.workers}
        self.resubmits = 0
        log.info("ray.evaluator", accuracy_workers=n, lent_cores=[core for _, core in self._lent],
                 latency_node=self.latency_node, avoid=avoid)

    def _new_worker(self) -> Any:
        # No Ray-side restarts: an actor restarted in place waits for a free CPU and its call with it, which
        # hangs the batch when a node is lost; the evaluator replaces dead actors itself (module docstring).
        return AccuracyActor.options(num_cpus=1, max_restarts=0).remote(  # type: ignore[attr-defined]
            *self._refs, self.recipe, self._avoid)

    def _lent_worker(self, core: int) -> Any:
        """An accuracy actor on a timed core of the latency node; the gate keeps it off while that node times."""
        assert self.latency_node is not None
        where = NodeAffinitySchedulingStrategy(self.latency_node, soft=False)
        return AccuracyActor.options(  # type: ignore[attr-defined]
            num_cpus=0, max_restarts=0, scheduling_strategy=where).remote(*self._refs, self.recipe, None, [core])

    def __call__(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        start = time.perf_counter()
        accs, measured = self._run_batch(list(candidates))
        seconds = (time.perf_counter() - start) / max(len(candidates), 1)
        return [assemble(c, acc, self.budget, measured.get(i), self.lut, self.space, seconds)
                for i, (c, acc) in enumerate(zip(candidates, accs, strict=True))]

    def _run_batch(self, cands: list[Candidate]) -> tuple[list[AccuracyResult], dict[int, RatioStats]]:
        """Timings and accuracy of one batch under the exclusivity gate (module docstring)."""
        timing: dict[Any, int] = {}
        timed = [i for i, c in enumerate(cands) if c.latency == "measured"] if self.latency is not None else []
        if timed:  # ask first (calls run in order): a restarted actor may sit on another node now
            self.latency_node = self._get(self.latency.where.remote())[0]
            timing = {self.latency.ratio.remote(dict(cands[i].ratios)): i for i in timed}
        measured: dict[int, RatioStats] = {}
        accs: list[AccuracyResult | None] = [None] * len(cands)
        joining = self._joining  # replacement actors join the pool once Ray has placed them
        queue, parked = deque(range(len(cands))), list[Any]()
        idle = [w for w in self.workers if not any(w is j for j in joining.values())]
        pending: dict[Any, tuple[int, Any]] = {}
        attempts = [0] * len(cands)
        while queue or pending or timing:
            gate = self.latency_node if timing else None
            if gate is None and parked:
                idle, parked = idle + parked, []
            if queue and not (idle or pending or parked or joining):
                fresh = self._new_worker()  # every actor was lost
                self.workers.append(fresh)
                joining[fresh.where.remote()] = fresh
            while queue and idle:
                i, actor = queue.popleft(), idle.pop()
                pending[actor.score.remote(cands[i], gate)] = (i, actor)
            for ref in self._wait([*pending, *timing, *joining]):
                if ref in timing:
                    measured[timing.pop(ref)] = self._get(ref)
                    continue
                if ref in joining:
                    actor = joining.pop(ref)
                    with suppress(RayActorError):
                        self._get(ref)
                        idle.append(actor)
                    continue
                i, actor = pending.pop(ref)
                try:
                    result = self._get(ref)
                except RayActorError as exc:  # process killed or node lost: the others take the candidate
                    attempts[i] += 1
                    if attempts[i] > MAX_RESUBMITS:
                        raise
                    log.warning("ray.actor_lost", candidate=cands[i].id, error=str(exc)[:200])
                    queue.appendleft(i)
                    fresh = self._replace(actor)
                    joining[fresh.where.remote()] = fresh
                    continue
                if result is None:  # gated: this actor shares the node being timed
                    queue.appendleft(i)
                    parked.append(actor)
                else:
                    accs[i] = result
                    idle.append(actor)
        return [a for a in accs if a is not None], measured

    def _replace(self, dead: Any) -> Any:
        """A new actor in place of a dead one (same object-store refs, so nothing is re-uploaded)."""
        self.resubmits += 1
        with suppress(Exception):  # already gone
            ray.kill(dead, no_restart=True)
        core = next((c for actor, c in self._lent if actor is dead), None)
        fresh = self._new_worker() if core is None else self._lent_worker(core)
        self._lent = [(fresh if actor is dead else actor, c) for actor, c in self._lent]
        self.workers = [fresh if w is dead else w for w in self.workers]
        return fresh

    def _wait(self, refs: list[Any]) -> list[Any]:
        """Refs that are ready, polling the cancel flag so a cancelled job stops mid-batch."""
        while True:
            if self.should_stop():
                self.abort(refs)
                raise EvaluationCancelled("the job was cancelled during evaluation")
            ready, rest = ray.wait(refs, num_returns=1, timeout=POLL_S)
            if ready:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0) if rest else ([], [])
                return [*ready, *more]

    def _get(self, ref: Any) -> Any:
        while True:
            try:
                return ray.get(ref, timeout=POLL_S)
            except GetTimeoutError:
                self._wait([ref])

    def abort(self, refs: Sequence[Any] = ()) -> None:
        """Cancel outstanding calls and kill every actor of this evaluator."""
        for ref in refs:
            with suppress(Exception):  # finished, or owned by a dead actor: nothing left to cancel
                ray.cancel(ref)
        self.shutdown()

    def actors(self) -> list[Any]:
        return [*self.workers, *([self.latency] if self.latency is not None else [])]

    def shutdown(self) -> None:
        for actor in self.actors():
            with suppress(Exception):  # already dead
                ray.kill(actor, no_restart=True)
