"""Evaluations on a real embedded Ray cluster: same results as in-process, cores kept apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from agents.base import Candidate
from agents.budget import Budget
from measurement.latency import MeterSettings
from service.config import RayUnavailableError
from service.execution import EvaluationCancelled
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator
from service.execution.ray_backend import RayEvaluator, actor_settings, latency_placement
from service.execution.ray_cluster import LATENCY_RESOURCE, connect
from service.pipeline import run_job
from service.spec import parse_spec
from tests.conftest import job_dict, make_space, synthetic_splits


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    connect(num_cpus=2)
    yield
    ray.shutdown()


def test_ray_scores_match_in_process_scores(cluster: None) -> None:
    space, data = make_space("small_cnn", 8, round_to=2), synthetic_splits(1, 8)
    budget = Budget("flops", 0.5 * space.flops, float(space.flops))
    recipe = AccuracyRecipe(recalibration_batches=2, short_steps=2)
    cands = [Candidate(i, space.uniform(r)) for i, r in enumerate([0.2, 0.5, 0.7])]
    remote = RayEvaluator(space, data, budget, recipe, None)
    try:
        got = remote(cands)
    finally:
        remote.shutdown()
    want = LocalEvaluator(space, data, budget, recipe, None)(cands)
    assert [(e.val_acc, e.flops, e.meets_budget) for e in got] == [(e.val_acc, e.flops, e.meets_budget) for e in want]
    assert len(remote.workers) == 2  # no timing: every CPU scores accuracy


@pytest.mark.parametrize("workers", [None, 1])
def test_accuracy_actors_take_the_timed_cores_only_as_lent_ones(cluster: None, workers: int | None) -> None:
    space, data = make_space("small_cnn", 8), synthetic_splits(1, 8)
    settings = MeterSettings(batch_size=8, warmup=1, repeats=5, max_seconds=0.2)
    remote = RayEvaluator(space, data, Budget("latency_ms", 0.8, 1.0), AccuracyRecipe(), settings,
                          accuracy_workers=workers)
    try:
        timed = set(ray.get(remote.latency.cores.remote()))
        accuracy_cores = [set(ray.get(w.pinned_cores.remote())) for w in remote.workers]
        # 2 CPUs, one reserved for timing: one actor off it, and one lent onto it unless the workers are set
        assert [bool(cores & timed) for cores in accuracy_cores] == ([False, True] if workers is None else [False])
        assert all(cores == timed for cores in accuracy_cores if cores & timed)
        result = remote([Candidate(1, space.uniform(0.5))])[0]
        assert result.latency_source == "measured" and result.latency_ci is not None
    finally:
        remote.shutdown()


def test_job_runs_on_ray_end_to_end(cluster: None, tmp_path: Path) -> None:
    spec = parse_spec(job_dict(execution={"backend": "ray"}, strategy={"name": "sensitivity", "ratios": [0.3, 0.6]}))
    report = run_job(spec, tmp_path).report
    assert report["search"]["backend"] == "ray" and report["strategy"] == "sensitivity"
    assert report["budget_met"] and report["search"]["evaluations"] >= 5
    curves = json.loads((tmp_path / "agent.json").read_text())["curves"]
    assert set(curves) == {"conv2.0", "conv3.0"}


def test_no_accuracy_work_runs_on_the_node_while_it_is_timed(cluster: None) -> None:
    """The finding this gate fixes: on one node, timing alongside accuracy work skewed ratios by ~10%."""
    space, data = make_space("small_cnn", 8, round_to=2), synthetic_splits(1, 8)
    settings = MeterSettings(batch_size=8, warmup=1, repeats=5, ci_halfwidth=1e-6, max_seconds=0.5)
    recipe = AccuracyRecipe(recalibration_batches=2, short_steps=50, finetune_batch_size=32)
    remote = RayEvaluator(space, data, Budget("latency_ms", 0.8, 1.0), recipe, settings)
    try:
        ray.get([w.where.remote() for w in remote.workers])  # placed: every actor takes part from the start
        batch = [Candidate(0, space.uniform(0.5)), Candidate(1, space.uniform(0.3)),
                 *[Candidate(10 + i, space.uniform(0.2 + 0.1 * i), latency="none") for i in range(4)]]
        results = remote(batch)
        assert [r.candidate.id for r in results] == [c.id for c in batch]
        assert [r.latency_source for r in results] == ["measured", "measured", None, None, None, None]
        timings = ray.get(remote.latency.spans.remote())
        scoring = [s for w in remote.workers for s in ray.get(w.spans.remote())]
        assert len(timings) == 2 and len(scoring) == 6
        assert {s[2] for s in scoring} == {remote.latency_node}  # same node: the gate is what keeps them apart
        timed = set(ray.get(remote.latency.cores.remote()))
        lent = [w for w in remote.workers if set(ray.get(w.pinned_cores.remote())) == timed]
        assert len(lent) == 1 and ray.get(lent[0].spans.remote())  # the timed core scored between timings
        assert not [(a, t) for a in scoring for t in timings if a[0] < t[1] and t[0] < a[1]]
    finally:
        remote.shutdown()


def test_cancel_stops_the_batch_and_kills_the_actors(cluster: None) -> None:
    space, data = make_space("small_cnn", 8, round_to=2), synthetic_splits(1, 8)
    budget = Budget("flops", 0.5 * space.flops, float(space.flops))
    recipe = AccuracyRecipe(recalibration_batches=2, short_steps=400, finetune_batch_size=32)
    calls = []

    def stop_after_first_poll() -> bool:
        calls.append(1)
        return len(calls) > 2

    remote = RayEvaluator(space, data, budget, recipe, None, should_stop=stop_after_first_poll)
    with pytest.raises(EvaluationCancelled):
        remote([Candidate(i, space.uniform(0.1 * (i + 1))) for i in range(6)])
    for actor in remote.actors():  # killed without restart: any call fails at once
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.where.remote(), timeout=30)


def test_gpu_latency_actor_asks_ray_for_a_gpu_and_times_on_the_one_it_gets(cluster: None) -> None:
    """CPU-side check of the CUDA path (the lead runs the real GPU numbers): placement and device remap."""
    gpu = MeterSettings(device="cuda:1")
    assert latency_placement(gpu, None) == {"num_cpus": 1, "num_gpus": 1}  # a GPU each, no CPU latency slot
    cpu = MeterSettings(threads=2)
    assert latency_placement(cpu, None) == {"num_cpus": 2, "resources": {LATENCY_RESOURCE: 1}}
    import os

    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "1"  # what Ray sets for an actor granted GPU 1
    try:
        assert actor_settings(gpu, [1]).device == "cuda:0"
        assert actor_settings(cpu, []).device == "cpu"
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def test_device_matching_names_the_field() -> None:
    from service.inventory import local_inventory, match_device
    from service.spec import DeviceSpec

    here = local_inventory()
    assert here[0]["cores"] >= 1 and "eager" in here[0]["runtimes"]
    gpu_box = {"node_id": "n2", "ip": "10.0.0.2", "hostname": "jetson", "resources": {"jetson": 1.0},
               "gpus": [{"name": "cuda:0", "model": "Orin", "memory_gib": 30.0}],
               "runtimes": ["eager", "torchscript", "cuda"]}
    nodes = [*here, gpu_box]
    assert match_device(nodes, DeviceSpec(name="cuda:0"))[0] == [gpu_box]
    assert match_device(nodes, DeviceSpec(name="cuda:1"))[1:] == ("name", "no node has cuda:1")
    assert match_device(nodes, DeviceSpec(node="jetson", runtime="onnxruntime"))[1] == "runtime"
    assert match_device(nodes, DeviceSpec(node="10.0.0.9"))[1] == "node"
    assert match_device(nodes, DeviceSpec(node="10.0.0.2"))[0] == [gpu_box]


def test_unreachable_cluster_is_a_clear_error() -> None:
    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(RayUnavailableError, match=r"cannot reach Ray at 127\.0\.0\.1:1"):
        connect("127.0.0.1:1")
