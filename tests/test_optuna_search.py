"""The Optuna agent: uniform start, feasibility under constraints, the Pareto front, the SQLite study,
and the ask/tell batch limits.

Most tests use a fake evaluator (cost is real, latency and accuracy are functions of the plan) so they
run in about a second; accuracy grows with the resource, so the most accurate plans are the ones
over the budget, which is exactly what a constrained search must not return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest

from agents.base import Candidate, Evaluation, SearchContext
from agents.budget import Budget
from agents.driver import SearchOutcome, run_search
from agents.optuna_search import OptunaAgent
from search_spaces.space import PruningSpace
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator
from tests.conftest import make_space, synthetic_splits

pytestmark = pytest.mark.slow  # Optuna studies, searched end to end

SLOWDOWN = 1.08  # measured latency is slower than the table predicts, as on real devices


class ChannelTable:
    """A stand-in lookup table: latency proportional to the kept channels."""

    def __init__(self, space: PruningSpace) -> None:
        self.unpruned = {d.name: d.units for d in space.dimensions}

    def predict(self, kept: Mapping[str, int]) -> float:
        return float(sum(kept.values()))

    def ratio(self, kept: Mapping[str, int]) -> float:
        return self.predict(kept) / self.predict(self.unpruned)

    def observe(self, kept: Mapping[str, int], measured_ratio: float) -> None:
        """An exact model has nothing to learn from whole-plan timings."""


class FakeEvaluator:
    """Real cost, latency from the table (x SLOWDOWN when "measured"), accuracy = resource ratio."""

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.batches: list[int] = []

    def __call__(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        self.batches.append(len(candidates))
        out = []
        for c in candidates:
            flops, params = self.ctx.space.cost(c.ratios)
            ratio = ci = source = None
            if self.ctx.budget.measured and c.latency != "none":
                predicted = self.ctx.resource_ratio(c.ratios)
                ratio = predicted * (SLOWDOWN if c.latency == "measured" else 1.0)
                ci, source = (ratio * 0.98, ratio * 1.02), c.latency
            resource = ratio if ratio is not None else flops / self.ctx.space.flops
            met = self.ctx.budget.met(flops, params, ci[1] if ci else None)
            out.append(Evaluation(c, flops, params, met, resource if c.accuracy else None, ratio, ci, source))
        return out


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    return make_space("small_cnn", 8, round_to=2)


def context(space: PruningSpace, metric: str, workdir: Path | None, events: list[dict[str, Any]]) -> SearchContext:
    if metric == "latency_ms":
        budget = Budget("latency_ms", 6.0, 10.0, tolerance=0.05)
        return SearchContext(space, budget, 0, emit=events.append, lut=ChannelTable(space), workdir=workdir)  # type: ignore[arg-type]
    return SearchContext(space, Budget("flops", 0.5 * space.flops, float(space.flops)), 0, emit=events.append,
                         workdir=workdir)


def fake_search(space: PruningSpace, metric: str = "flops", workdir: Path | None = None,
                **params: Any) -> tuple[OptunaAgent, SearchOutcome, FakeEvaluator, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    ctx = context(space, metric, workdir, events)
    agent = OptunaAgent(ctx, **params)
    evaluator = FakeEvaluator(ctx)
    return agent, run_search(agent, evaluator, events.append), evaluator, events


def test_uniform_plan_is_trial_zero_and_meets_budget(space: PruningSpace, tmp_path: Path) -> None:
    # The real evaluator: the uniform plan must meet the budget as the job measures it.
    events: list[dict[str, Any]] = []
    ctx = context(space, "flops", tmp_path, events)
    agent = OptunaAgent(ctx, trials=3, parallel=2)
    evaluator = LocalEvaluator(space, synthetic_splits(1, 8), ctx.budget, AccuracyRecipe(recalibration_batches=1),
                               None)
    outcome = run_search(agent, evaluator, events.append)
    first = outcome.history[0]
    assert first.candidate.tag["trial"] == 0
    assert dict(first.candidate.ratios) == space.uniform(agent.uniform_ratio)
    assert 0 < agent.uniform_ratio < max(d.max_ratio for d in space.dimensions)
    assert first.meets_budget and first.val_acc is not None
    assert space.cost(first.candidate.ratios)[0] <= ctx.budget.limit
    # "just" meets it: clearly less pruning does not.
    assert space.cost(space.uniform(agent.uniform_ratio - 0.1))[0] > ctx.budget.limit
    trial0 = agent.study.trials[0]
    assert trial0.params == space.uniform(agent.uniform_ratio) and trial0.user_attrs["plan"] == "uniform"
    assert trial0.user_attrs["resource_ratio"] == first.flops / space.flops  # trial 0 carries it as every trial does
    assert trial0.constraints["budget"] <= 0  # the constraint optuna-dashboard shows, stored and feasible
    assert [e["number"] for e in events if e["type"] == "trial"] == [0, 1, 2]


def test_a_table_that_rules_out_every_plan_still_gets_its_anchor_measured(space: PruningSpace) -> None:
    """A latency budget the table says no plan meets (a base timed slow makes it say so): trial 0, the
    uniform anchor, is timed all the same, so the table is corrected by one measurement instead of
    filtering every trial on its word; the other trials stay table-only."""
    events: list[dict[str, Any]] = []
    ctx = context(space, "latency_ms", None, events)
    ctx = SearchContext(space, Budget("latency_ms", 0.2, 10.0), 0, emit=events.append, lut=ctx.lut)  # 0.02x
    agent = OptunaAgent(ctx, trials=4, parallel=2)
    outcome = run_search(agent, FakeEvaluator(ctx), events.append)
    first, *rest = outcome.history
    assert first.candidate.tag["trial"] == 0 and agent.study.trials[0].user_attrs["plan"] == "uniform"
    assert first.candidate.latency == "measured" and first.candidate.accuracy and first.latency_source == "measured"
    assert rest and all(e.candidate.latency == "lut" and not e.candidate.accuracy for e in rest)


@pytest.mark.parametrize("metric", ["flops", "latency_ms"])
def test_tpe_best_is_feasible_and_the_most_accurate_feasible(space: PruningSpace, metric: str) -> None:
    agent, outcome, _, events = fake_search(space, metric, trials=16, parallel=2)
    history = outcome.history
    best = outcome.best
    assert best is not None and best.meets_budget
    assert best.val_acc == max(e.val_acc for e in history if e.meets_budget and e.val_acc is not None)
    if metric == "latency_ms":
        # The test bites only if some infeasible plan was more accurate than the best.
        assert any(e.val_acc is not None and not e.meets_budget and e.val_acc > best.val_acc for e in history)
        assert best.latency_source == "measured" and best.latency_ci is not None
        assert best.latency_ci[1] <= 0.6 * 1.05
    # Optuna's feasibility is exactly the evaluator's, and its best trial agrees with the agent's.
    by_trial = {e.candidate.tag["trial"]: e for e in history}
    for t in agent.study.trials:
        assert (t.constraints["budget"] <= 0) == by_trial[t.number].meets_budget
        assert (t.state == optuna.trial.TrialState.PRUNED) == (by_trial[t.number].val_acc is None)
    assert agent.study.best_value == best.val_acc
    # Pre-filtered plans are in the history, cost only, and never meet the budget.
    pre = [e for e in history if e.candidate.tag.get("prefiltered")]
    assert all(not e.candidate.accuracy and e.val_acc is None and not e.meets_budget for e in pre)
    assert agent.summary()["prefiltered"] == len(pre)
    trial_events = [e for e in events if e["type"] == "trial"]
    assert len(trial_events) == len(history) == 16
    assert {"number", "val_acc", "resource_ratio", "feasible"} <= set(trial_events[0])


def test_nsga2_front_is_feasible_and_mutually_non_dominated(space: PruningSpace) -> None:
    agent, outcome, _, _ = fake_search(space, "latency_ms", sampler="nsga2", trials=16, parallel=4)
    front = agent.summary()["pareto_front"]
    assert front

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return (a["val_acc"] >= b["val_acc"] and a["resource_ratio"] <= b["resource_ratio"]
                and (a["val_acc"] > b["val_acc"] or a["resource_ratio"] < b["resource_ratio"]))

    assert not any(dominates(a, b) for a in front for b in front if a is not b)
    by_trial = {e.candidate.tag["trial"]: e for e in outcome.history}
    assert all(by_trial[p["number"]].meets_budget for p in front)
    assert all(dict(by_trial[p["number"]].candidate.ratios) == p["ratios"] for p in front)
    # Complete: every feasible evaluated plan is on the front or dominated by a point of it.
    for e in outcome.history:
        if e.meets_budget and e.val_acc is not None:
            point = {"val_acc": e.val_acc, "resource_ratio": e.latency_ratio}
            assert any(dominates(p, point) or p["number"] == e.candidate.tag["trial"] for p in front)
    best = outcome.best
    assert best is not None and best.meets_budget
    assert best.val_acc == max(p["val_acc"] for p in front)


def test_study_is_readable_from_sqlite_and_never_resumed(space: PruningSpace, tmp_path: Path) -> None:
    first, out1, _, _ = fake_search(space, workdir=tmp_path / "job", trials=5, parallel=2)
    url = f"sqlite:///{tmp_path / 'job' / 'optuna.db'}"
    assert first.summary()["storage"] == url
    study = optuna.load_study(study_name=first.summary()["study"], storage=url)  # what optuna-dashboard does
    assert len(study.trials) == 5 and all(t.state.is_finished() for t in study.trials)
    assert study.trials[0].params == space.uniform(first.uniform_ratio)
    assert out1.best is not None and study.best_value == out1.best.val_acc
    # A re-run on the same storage starts a new study: same candidates, none of the old trials.
    second, out2, _, _ = fake_search(space, workdir=tmp_path / "job", trials=5, parallel=2)
    assert second.study.study_name != first.study.study_name and len(second.study.trials) == 5
    assert [dict(e.candidate.ratios) for e in out1.history] == [dict(e.candidate.ratios) for e in out2.history]
    # save() copies the database out of the job folder, and writes nothing when it is already there.
    out = tmp_path / "artifacts"
    out.mkdir()
    assert first.save(out) == ["optuna.db"]
    copied = optuna.load_study(study_name=first.study.study_name, storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.params for t in copied.trials] == [t.params for t in study.trials]
    assert first.save(tmp_path / "job") == []


def test_in_memory_without_workdir(space: PruningSpace, tmp_path: Path) -> None:
    agent, outcome, _, _ = fake_search(space, trials=3, parallel=3)
    assert agent.summary()["storage"] is None and len(outcome.history) == 3
    assert agent.save(tmp_path) == [] and not any(tmp_path.iterdir())


@pytest.mark.parametrize(("trials", "parallel"), [(7, 3), (2, 5), (4, 1)])
def test_batches_never_exceed_parallel_or_trials(space: PruningSpace, trials: int, parallel: int) -> None:
    agent, outcome, evaluator, _ = fake_search(space, trials=trials, parallel=parallel)
    assert all(0 < n <= parallel for n in evaluator.batches)
    assert sum(evaluator.batches) == len(outcome.history) == trials == agent.planned_evaluations()
    assert agent.suggest() == []  # finished stays finished
    assert len(agent.study.trials) == trials + agent.repeats


def test_each_result_is_told_once(space: PruningSpace) -> None:
    events: list[dict[str, Any]] = []
    ctx = context(space, "flops", None, events)
    agent = OptunaAgent(ctx, trials=4, parallel=2)
    results = FakeEvaluator(ctx)(agent.suggest())
    agent.observe(results[:1])
    with pytest.raises(ValueError, match="already observed"):
        agent.observe(results[:1])
    agent.observe(results[1:])
    assert agent.summary()["trials"] == 2


def plan_of(space: PruningSpace, e: Evaluation) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(space.kept_for(e.candidate.ratios).items()))


def test_a_plan_is_evaluated_once_and_repeats_are_told_its_result() -> None:
    # Coarse rounding: few distinct networks, so TPE's continuous ratios often name one already evaluated.
    coarse = make_space("small_cnn", 8, round_to=16)  # 2 x 4 kept-channel counts: 8 networks in all
    agent, outcome, _, _ = fake_search(coarse, trials=5, parallel=3)
    plans = [plan_of(coarse, e) for e in outcome.history]
    assert len(set(plans)) == len(plans) == 5  # every evaluation a new network, and still 5 of them
    repeats = [t for t in agent.study.trials if "repeat_of_candidate" in t.user_attrs]
    assert agent.repeats == len(repeats) > 0 and agent.summary()["repeats"] == len(repeats)
    by_id = {e.candidate.id: e for e in outcome.history}
    for t in repeats:  # told exactly what its plan's first trial was told, constraint included
        first = by_id[t.user_attrs["repeat_of_candidate"]]
        assert t.state.is_finished() and t.values == [first.val_acc]
        assert (t.constraints["budget"] <= 0) == first.meets_budget
        assert coarse.kept_for(t.params) == coarse.kept_for(first.candidate.ratios)
    # agent.json's best is the study's best (a repeat stands for its plan's first trial)
    best = outcome.best
    study_best = agent.study.best_trial
    assert best is not None and study_best.value == best.val_acc
    assert agent.summary()["best_trial"] == best.candidate.tag["trial"]
    assert study_best.number == best.candidate.tag["trial"] or (
        study_best.user_attrs["repeat_of_candidate"] == best.candidate.id)


def test_a_search_that_runs_out_of_new_plans_ends() -> None:
    tiny = make_space("small_cnn", 8, round_to=16, max_ratio=0.5)  # 6 networks in all
    distinct = {tuple(sorted(tiny.kept_for(tiny.uniform(r)).items())) for r in (0.0, 0.5)}
    agent, outcome, _, _ = fake_search(tiny, trials=40, parallel=2)
    assert len(outcome.history) < 40 and agent.exhausted and agent.suggest() == []
    assert len({plan_of(tiny, e) for e in outcome.history}) == len(outcome.history) >= len(distinct)
