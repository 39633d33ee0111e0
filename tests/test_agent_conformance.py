"""Every agent through the same checks (as Optuna runs every storage through one suite).

A tiny model, synthetic data, and both a FLOPs budget and a measured-latency budget (with a
lookup table). Parameters are shrunk so each agent finishes in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents.base import Candidate, Evaluation, ResumeMismatchError, SearchContext
from agents.budget import Budget
from agents.driver import run_search
from agents.registry import AGENTS, make_agent
from measurement.latency import LatencyMeter, MeterSettings
from measurement.lut import LatencyTable
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator
from tests.conftest import FAST_STRATEGIES as FAST
from tests.conftest import macs_timer, make_space, synthetic_splits

pytestmark = pytest.mark.slow  # every strategy runs small searches

MAX_EVALUATIONS = 200


class CountingEvaluator:
    """Wraps the real evaluator and records what the driver asked for."""

    def __init__(self, inner: LocalEvaluator) -> None:
        self.inner = inner
        self.seen: list[int] = []

    def __call__(self, candidates: list[Candidate]) -> list[Evaluation]:
        self.seen += [c.id for c in candidates]
        assert len(self.seen) <= MAX_EVALUATIONS, "agent does not terminate"
        return self.inner(candidates)


def search(name: str, metric: str, tmp_path: Path, seed: int = 0) -> tuple[Any, Any, CountingEvaluator, list[Any]]:
    space = make_space("small_cnn", 8, round_to=2)
    data = synthetic_splits(1, 8)
    lut = meter = None
    if metric == "latency_ms":
        meter = LatencyMeter(MeterSettings(batch_size=16, warmup=1, repeats=6, max_seconds=0.3, ci_halfwidth=0.05),
                             timer=macs_timer)
        lut = LatencyTable(space, meter, tmp_path / "lut", repeats=3)
        lut.build()
        base_ms = meter.measure(space.base, meter.example(1, 8), repeats=20).median_ms
        lut.calibrate(base_ms)
        budget = Budget("latency_ms", 0.8 * base_ms, base_ms, tolerance=0.05)
    else:
        budget = Budget("flops", 0.5 * space.flops, float(space.flops))
    events: list[dict[str, Any]] = []
    ctx = SearchContext(space, budget, seed, emit=events.append, lut=lut, workdir=tmp_path)
    agent = make_agent(name, ctx, FAST[name])
    evaluator = CountingEvaluator(LocalEvaluator(space, data, budget, AccuracyRecipe(recalibration_batches=1),
                                                 meter, lut))
    outcome = run_search(agent, evaluator, events.append)
    return agent, outcome, evaluator, events


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_flops_budget(name: str, tmp_path: Path) -> None:
    agent, outcome, evaluator, events = search(name, "flops", tmp_path)
    space = agent.ctx.space
    assert len(evaluator.seen) == len(set(evaluator.seen)) == len(outcome.history), "each candidate exactly once"
    for e in outcome.history:
        assert set(e.candidate.ratios) <= {d.name for d in space.dimensions}
        assert all(0 <= r <= space.dimension(n).max_ratio + 1e-9 for n, r in e.candidate.ratios.items())
    best = outcome.best
    assert best is not None and best.meets_budget and best in outcome.history
    assert space.cost(best.candidate.ratios)[0] <= agent.ctx.budget.limit
    assert any(e["type"] == "evaluation" for e in events)
    assert isinstance(agent.summary(), dict)


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_measured_latency_budget(name: str, tmp_path: Path) -> None:
    _agent, outcome, _, _ = search(name, "latency_ms", tmp_path)
    best = outcome.best
    assert best is not None and best.meets_budget
    if best.latency_source == "measured":
        assert best.latency_ci is not None and best.latency_ci[1] <= 0.8 * 1.05


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_same_seed_same_search(name: str, tmp_path: Path) -> None:
    _, first, _, _ = search(name, "flops", tmp_path / "a")
    _, second, _, _ = search(name, "flops", tmp_path / "b")
    assert [dict(e.candidate.ratios) for e in first.history] == [dict(e.candidate.ratios) for e in second.history]


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_save_writes_only_what_it_lists(name: str, tmp_path: Path) -> None:
    agent, _, _, _ = search(name, "flops", tmp_path / "run")
    out = tmp_path / "artifacts"
    out.mkdir()
    files = agent.save(out)
    assert sorted(files) == sorted(p.name for p in out.iterdir())


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_resume_from_checkpoint_continues_the_same_search(name: str, tmp_path: Path) -> None:
    """A search killed after its second checkpoint and resumed evaluates exactly what an
    uninterrupted one does, none twice. Agents that cannot resume say so with state_dict() None."""
    _, whole, _, _ = search(name, "flops", tmp_path / "whole")
    space = make_space("small_cnn", 8, round_to=2)
    data = synthetic_splits(1, 8)
    budget = Budget("flops", 0.5 * space.flops, float(space.flops))

    def fresh(workdir: Path) -> tuple[Any, CountingEvaluator]:
        ctx = SearchContext(space, budget, 0, workdir=workdir)
        evaluator = LocalEvaluator(space, data, budget, AccuracyRecipe(recalibration_batches=1), None)
        return make_agent(name, ctx, FAST[name]), CountingEvaluator(evaluator)

    agent, evaluator = fresh(tmp_path / "a")
    if agent.state_dict() is None:
        pytest.skip(f"{name} re-runs from the start after a crash (documented)")
    saved: list[dict[str, Any]] = []

    def checkpoint(state: dict[str, Any]) -> None:
        saved.append(json.loads(json.dumps(state)))  # what the store keeps: JSON
        if len(saved) == 2:
            raise Crash

    with pytest.raises(Crash):
        run_search(agent, evaluator, lambda e: None, checkpoint=checkpoint)
    resumed_agent, second = fresh(tmp_path / "b")
    outcome = run_search(resumed_agent, second, lambda e: None, resume=saved[-1])
    ratios = [dict(e.candidate.ratios) for e in outcome.history]
    assert ratios == [dict(e.candidate.ratios) for e in whole.history]
    assert not set(second.seen) & {r["id"] for r in saved[-1]["history"]}  # nothing evaluated twice
    assert outcome.best is not None and whole.best is not None
    assert outcome.best.candidate.ratios == whole.best.candidate.ratios


@pytest.mark.parametrize("name", ["amc", "optuna"])  # the seeded learners; HALP replays the same for any seed
def test_replay_refuses_a_checkpoint_it_would_not_reproduce(name: str, tmp_path: Path) -> None:
    """Replay-resumed agents check every replayed candidate: another seed must not silently continue."""
    space = make_space("small_cnn", 8, round_to=2)
    data = synthetic_splits(1, 8)
    budget = Budget("flops", 0.5 * space.flops, float(space.flops))
    saved: list[dict[str, Any]] = []

    def checkpoint(state: dict[str, Any]) -> None:
        saved.append(json.loads(json.dumps(state)))
        if len(saved) == 2:
            raise Crash

    evaluator = LocalEvaluator(space, data, budget, AccuracyRecipe(recalibration_batches=1), None)
    agent = make_agent(name, SearchContext(space, budget, 0, workdir=tmp_path / "a"), FAST[name])
    with pytest.raises(Crash):
        run_search(agent, evaluator, lambda e: None, checkpoint=checkpoint)
    other_seed = make_agent(name, SearchContext(space, budget, 1, workdir=tmp_path / "b"), FAST[name])
    with pytest.raises(ResumeMismatchError):
        run_search(other_seed, evaluator, lambda e: None, resume=saved[-1])
