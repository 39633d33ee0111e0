"""Bisection baselines drive one knob to the budget on measured cost."""

from __future__ import annotations

import pytest

from agents.base import SearchContext
from agents.bisection import GlobalAgent, UniformAgent, global_ranking
from agents.budget import Budget
from agents.driver import run_search
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator
from tests.conftest import make_space, synthetic_splits


@pytest.mark.slow
@pytest.mark.parametrize("agent_cls", [UniformAgent, GlobalAgent])
@pytest.mark.parametrize("metric", ["flops", "params"])
def test_budget_met_within_one_rounding_step(agent_cls: type[UniformAgent], metric: str) -> None:
    space = make_space("resnet20", 8, round_to=4)
    base = space.flops if metric == "flops" else space.params
    budget = Budget(metric, 0.5 * base, base)
    data = synthetic_splits(1, 8)
    evaluator = LocalEvaluator(space, data, budget, AccuracyRecipe(recalibration_batches=1), None)
    agent = agent_cls(SearchContext(space, budget, seed=0), steps=14)
    outcome = run_search(agent, evaluator, lambda e: None)
    assert outcome.best is not None and outcome.best.meets_budget
    flops, params = space.cost(outcome.best.candidate.ratios)
    assert (flops if metric == "flops" else params) <= budget.limit
    # The last knob that failed gives a plan at most one rounding step larger in every group.
    failing = agent.knob(agent.lo)
    kept_best = space.kept_for(outcome.best.candidate.ratios)
    kept_fail = space.kept_for(failing)
    assert not budget.met(*space.cost(failing))
    assert all(0 <= kept_fail[n] - kept_best[n] <= 4 for n in kept_best)
    assert len(outcome.history) == 15


def test_global_ranking_prunes_unimportant_groups_more() -> None:
    space = make_space("small_cnn", 8)
    scores = space.importance_scores()
    ratios = global_ranking(space)(0.4)
    removed = sum(round(r * d.units) for d, r in zip(space.dimensions, ratios.values(), strict=True))
    assert removed == pytest.approx(0.4 * sum(len(s) for s in scores.values()), abs=2)
    assert ratios != space.uniform(0.4)


def test_unreachable_budget_ends_without_a_plan() -> None:
    space = make_space("small_cnn", 8, max_ratio=0.3)
    budget = Budget("flops", 0.1 * space.flops, space.flops)
    evaluator = LocalEvaluator(space, synthetic_splits(1, 8), budget, AccuracyRecipe(), None)
    outcome = run_search(UniformAgent(SearchContext(space, budget, 0)), evaluator, lambda e: None)
    assert outcome.best is None and len(outcome.history) == 1


def test_latency_tolerance_absorbs_noise_not_a_plan_over_the_target() -> None:
    budget = Budget("latency_ms", 5.0, 10.0)  # target ratio 0.5, tolerance 3%
    assert budget.met(0, 0, latency_ci_high=0.514, latency_ratio=0.499)  # noisy, but centred inside
    assert not budget.met(0, 0, latency_ci_high=0.514, latency_ratio=0.507)  # over the target, CI inside
    assert not budget.met(0, 0, latency_ci_high=0.52, latency_ratio=0.49)  # too noisy to tell
    assert not budget.met(0, 0)  # unmeasured: never met
