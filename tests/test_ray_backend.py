"""Evaluations on a real embedded Ray cluster: same results as in-process, cores kept apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from agents.base import Candidate
from agents.budget import Budget
from measurement.evaluator import AccuracyRecipe, LocalEvaluator
from measurement.latency import MeterSettings
from service.config import RayUnavailableError
from service.pipeline import run_job
from service.ray_backend import RayEvaluator, connect
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


def test_accuracy_actors_never_share_the_timed_cores(cluster: None) -> None:
    space, data = make_space("small_cnn", 8), synthetic_splits(1, 8)
    settings = MeterSettings(batch_size=8, warmup=1, repeats=5, max_seconds=0.2)
    remote = RayEvaluator(space, data, Budget("latency_ms", 0.8, 1.0), AccuracyRecipe(), settings)
    try:
        timed = set(ray.get(remote.latency.cores.remote()))  # type: ignore[union-attr]
        accuracy_cores = [ray.get(w.pinned_cores.remote()) for w in remote.workers]
        assert len(remote.workers) == 1  # 2 CPUs: one is reserved for timing
        for cores in accuracy_cores:
            assert cores and not set(cores) & timed
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


def test_unreachable_cluster_is_a_clear_error() -> None:
    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(RayUnavailableError, match=r"cannot reach Ray at 127\.0\.0\.1:1"):
        connect("127.0.0.1:1")
