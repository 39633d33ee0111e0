"""A real two-node Ray cluster on loopback (`ray start` head + worker, 1 CPU and one custom resource each).

Covers the device inventory, latency on a chosen node, a worker process killed mid-evaluation, a
cancelled batch leaving no task or actor behind, a node lost mid-batch, and the server matching a
job's device against the cluster over HTTP. The node-loss test runs last: it takes node b down.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray.util.state import list_actors, list_tasks

from agents.base import Candidate, Evaluation
from agents.budget import Budget
from bench.scaling import LoopbackCluster
from measurement.latency import MeterSettings
from service.execution import EvaluationCancelled
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator
from service.execution.ray_backend import RayEvaluator, Span
from service.execution.ray_cluster import LATENCY_RESOURCE, connect
from service.inventory import cluster_inventory, match_device
from service.spec import DeviceSpec
from tests.conftest import job_dict, make_space, synthetic_splits
from tests.live_server import TOKEN, started, stop

RECIPE = AccuracyRecipe(recalibration_batches=2, short_steps=2, finetune_batch_size=32)
SLOW_STEPS = 400  # about a second per candidate on this machine: long enough to be interrupted


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    if ray.is_initialized():
        ray.shutdown()
    c = LoopbackCluster([{"dev_a": 1, LATENCY_RESOURCE: 1}, {"dev_b": 1, LATENCY_RESOURCE: 1}], dashboard=True)
    c.start()
    saved = {k: os.environ.get(k) for k in c.client_env}
    os.environ.update(c.client_env)  # this driver and the server's processes join with the cluster's token
    try:
        connect(c.address)
        yield c
    finally:
        ray.shutdown()
        c.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert not c.stragglers()


def node_of(resource: str) -> str:
    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"])


def slow(space: Any, n: int) -> list[Candidate]:
    return [Candidate(i, space.uniform(0.1 + 0.08 * i), latency="lut", short_steps=SLOW_STEPS) for i in range(n)]


def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"condition not met in {timeout}s: {check}")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, box


def running_score_pids() -> set[int]:
    tasks = list_tasks(filters=[("name", "=", "AccuracyActor.score"), ("state", "=", "RUNNING")], detail=True)
    return {t.worker_pid for t in tasks if t.worker_pid}


def test_inventory_reports_every_node(cluster: LoopbackCluster) -> None:
    nodes = cluster_inventory()
    assert len(nodes) == 2
    assert sorted(r for n in nodes for r in n["resources"] if r.startswith("dev_")) == ["dev_a", "dev_b"]
    for n in nodes:
        assert n["cpu_model"] and n["cores"] >= 1 and n["cpus"] == 1.0 and n["node_id"]
        assert {"eager", "torchscript", "onnxruntime"} <= set(n["runtimes"]) and n["gpus"] == []
    assert match_device(nodes, DeviceSpec(node="dev_b"))[0][0]["resources"].get("dev_b") == 1
    assert match_device(nodes, DeviceSpec(name="cuda:0"))[1:] == ([], "name", "no node has cuda:0")[1:]
    assert match_device(nodes, DeviceSpec(node="nowhere"))[1] == "node"


@pytest.mark.parametrize("resource", ["dev_b", "dev_a"])
def test_latency_runs_on_the_requested_node_while_search_runs_elsewhere(cluster: LoopbackCluster,
                                                                        resource: str) -> None:
    space, data = make_space("small_cnn", 8, round_to=2), synthetic_splits(1, 8)
    settings = MeterSettings(batch_size=8, warmup=1, repeats=5, ci_halfwidth=1e-6, max_seconds=1.0)
    ev = RayEvaluator(space, data, Budget("latency_ms", 0.8, 1.0), RECIPE, settings, node=resource)
    try:
        assert ev.latency_node == node_of(resource)
        ray.get([w.where.remote() for w in ev.workers])  # placed and loaded: the batch starts on both nodes at once
        timed = [Candidate(i, space.uniform(0.5)) for i in range(2)]
        results = ev([*timed, *[Candidate(10 + i, space.uniform(0.3), latency="none", short_steps=100)
                                for i in range(4)]])
        assert [r.latency_source for r in results[:2]] == ["measured", "measured"]
        assert all(r.val_acc is not None for r in results)
        timings: list[Span] = ray.get(ev.latency.spans.remote())
        scoring: list[Span] = [s for w in ev.workers for s in ray.get(w.spans.remote())]
        elsewhere = [s for s in scoring if s[2] != ev.latency_node]
        assert {s[2] for s in elsewhere} == {node_of("dev_a" if resource == "dev_b" else "dev_b")}
        # the gate is per node: accuracy on the other node went on while the target node was timing, and the
        # target node's lent core scored only between its timings
        assert any(a0 < t1 and t0 < a1 for a0, a1, _ in elsewhere for t0, t1, _ in timings)
        assert not [1 for a0, a1, node in scoring for t0, t1, _ in timings if node == ev.latency_node
                    and a0 < t1 and t0 < a1]
    finally:
        ev.shutdown()


def test_a_jobs_absolute_timings_run_on_its_latency_node(cluster: LoopbackCluster, tmp_path: Path) -> None:
    """Base latency and the final re-measure come from the node the job times on, not the worker's."""
    from service.config import Settings
    from service.pipeline import run_job
    from service.spec import JobSpec

    spec = JobSpec.model_validate(job_dict(device={"node": "dev_b"}, execution={"backend": "ray"}))
    report = run_job(spec, tmp_path, settings=Settings(ray_address=cluster.address,
                                                       lut_cache_dir=tmp_path / "lut")).report
    assert report["measurement"]["timed_on"] == node_of("dev_b")
    assert report["pruned"]["latency"]["median_ms"] > 0 and report["budget_met"]


def test_killed_worker_process_mid_evaluation_is_retried(cluster: LoopbackCluster) -> None:
    space, data = make_space("small_cnn", 8, round_to=2), synthetic_splits(1, 8)
    budget = Budget("flops", 0.5 * space.flops, float(space.flops))
    cands = slow(space, 6)
    ev = RayEvaluator(space, data, budget, RECIPE, None, accuracy_workers=2)
    try:
        pids = {pid for _, pid in ray.get([w.where.remote() for w in ev.workers])}
        thread, box = in_thread(lambda: ev(cands))
        victim = wait_until(lambda: running_score_pids() & pids)
        os.kill(next(iter(victim)), signal.SIGKILL)
        thread.join(120)
        assert "error" not in box, box.get("error")
        got: list[Evaluation] = box["result"]
        assert [e.candidate.id for e in got] == [c.id for c in cands]  # each exactly once, in order
        assert ev.resubmits >= 1
        want = LocalEvaluator(space, data, budget, RECIPE, None)(cands)
        assert [(e.val_acc, e.flops) for e in got] == [(e.val_acc, e.flops) for e in want]
    finally:
        ev.shutdown()


def test_cancel_mid_batch_leaves_nothing_running(cluster: LoopbackCluster) -> None:
    space, data = make_space("small_cnn", 8, round_to=2), synthetic_splits(1, 8)
    settings = MeterSettings(batch_size=8, warmup=1, repeats=5, ci_halfwidth=1e-6, max_seconds=30.0)
    stop_flag = threading.Event()
    ev = RayEvaluator(space, data, Budget("latency_ms", 0.8, 1.0), RECIPE, settings, node="dev_b",
                      should_stop=stop_flag.is_set)
    actor_ids = {a._actor_id.hex() for a in ev.actors()}
    thread, box = in_thread(lambda: ev([Candidate(0, space.uniform(0.5)), *slow(space, 6)]))
    wait_until(running_score_pids)
    stop_flag.set()
    thread.join(30)
    assert isinstance(box.get("error"), EvaluationCancelled)

    def nothing_left() -> bool:
        alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.actor_id in actor_ids]
        job_tasks = list_tasks(filters=[("job_id", "=", ray.get_runtime_context().get_job_id())])
        live_tasks = [t for t in job_tasks if t.name.startswith(("AccuracyActor.", "LatencyActor."))
                      and t.state not in ("FINISHED", "FAILED")]
        return not alive and not live_tasks

    wait_until(nothing_left)


def test_server_matches_devices_against_the_cluster(cluster: LoopbackCluster, tmp_path: Path) -> None:
    srv = started(tmp_path, PRUNESEARCH_RAY_ADDRESS=cluster.address)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        nodes = httpx.get(f"{srv.url}/api/v1/devices", timeout=60).json()["nodes"]
        assert sorted(r for n in nodes for r in n["resources"] if r.startswith("dev_")) == ["dev_a", "dev_b"]
        catalog = httpx.get(f"{srv.url}/api/v1/catalog", timeout=60).json()
        assert len([d for d in catalog["devices"] if d["name"] == "cpu"]) == 2
        for device, field in (({"node": "jetson"}, "node"), ({"name": "cuda:0"}, "name")):
            r = httpx.post(f"{srv.url}/api/v1/jobs", json=job_dict(device=device, execution={"backend": "ray"}),
                           headers=headers, timeout=60)
            assert r.status_code == 400, r.text
            assert r.json()["detail"][0]["loc"] == ["body", "device", field]
        # a valid job on node b, cancelled mid-search: the worker's Ray batch stops and the job ends "cancelled"
        slow_job = job_dict(device={"node": "dev_b"}, execution={"backend": "ray"},
                            finetune={"short_steps": SLOW_STEPS},
                            strategy={"name": "sensitivity", "ratios": [0.2, 0.4, 0.6, 0.8]})
        ok = httpx.post(f"{srv.url}/api/v1/jobs", json=slow_job, headers=headers, timeout=60)
        assert ok.status_code == 201, ok.text
        url = f"{srv.url}/api/v1/jobs/{ok.json()['id']}"
        wait_until(lambda: (httpx.get(url).json()["progress"] or {}).get("phase") == "search", timeout=120)
        time.sleep(1.0)  # into the first batch, which emits nothing until it is complete
        httpx.post(f"{url}/cancel", headers=headers)
        job = wait_until(lambda: (j := httpx.get(url).json())["status"] not in ("queued", "running") and j, timeout=60)
        assert job["status"] == "cancelled" and job["error"] == "cancelled by request", job
    finally:
        stop(srv)


def test_node_lost_mid_batch_does_not_lose_the_batch(cluster: LoopbackCluster) -> None:
    space, data = make_space("small_cnn", 8, round_to=2), synthetic_splits(1, 8)
    budget = Budget("flops", 0.5 * space.flops, float(space.flops))
    cands = slow(space, 6)
    ev = RayEvaluator(space, data, budget, RECIPE, None, accuracy_workers=2)
    try:
        nodes = {node for node, _ in ray.get([w.where.remote() for w in ev.workers])}
        assert nodes == {node_of("dev_a"), node_of("dev_b")}
        thread, box = in_thread(lambda: ev(cands))
        wait_until(lambda: len(running_score_pids()) == 2)
        cluster.kill_node(1)  # node b: its raylet and every worker on it go away
        thread.join(180)
        assert "error" not in box, box.get("error")
        assert [e.candidate.id for e in box["result"]] == [c.id for c in cands]
        assert all(e.val_acc is not None for e in box["result"])
    finally:
        ev.shutdown()
