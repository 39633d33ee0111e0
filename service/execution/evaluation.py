"""Evaluate candidate plans: cost, latency ratio against the base, validation accuracy.

The steps are plain functions of (space, data, plan) so that every backend runs the same code:
`LocalEvaluator` calls them in this process, the Ray backend calls them inside actors that hold
the base model and data. They live with the backends, not in `measurement/`, because candidates and
evaluations are the agents' types: measurement stays below the agents. Accuracy always follows one
recipe so candidates are comparable: apply the plan, recalibrate BatchNorm on training batches,
optionally fine-tune N steps, score on the validation split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from torch import nn

from agents.base import Candidate, Evaluation
from agents.budget import Budget
from measurement.accuracy import accuracy, recalibrate_batchnorm
from measurement.latency import LatencyMeter, RatioStats
from measurement.lut import LatencyTable
from measurement.runtimes import InferenceCall
from measurement.training import TrainConfig, default_augment, train
from search_spaces.datasets import DataSplits
from search_spaces.space import PruningSpace
from service.execution.base import EvaluationCancelled


@dataclass(frozen=True)
class AccuracyRecipe:
    bn_recalibration: bool = True
    recalibration_batches: int = 10
    batch_size: int = 256
    val_limit: int | None = None
    short_steps: int = 0
    lr: float = 0.01
    finetune_batch_size: int = 128
    seed: int = 0

    def for_candidate(self, cand: Candidate) -> AccuracyRecipe:
        return self if cand.short_steps is None else replace(self, short_steps=cand.short_steps)


@dataclass(frozen=True)
class AccuracyResult:
    val_acc: float | None
    flops: int
    params: int


def restore_accuracy(model: nn.Module, data: DataSplits, recipe: AccuracyRecipe) -> nn.Module:
    """BN recalibration and the short fine-tune that every candidate gets before it is scored."""
    if recipe.bn_recalibration:
        recalibrate_batchnorm(model, data.train, recipe.recalibration_batches, recipe.finetune_batch_size, recipe.seed)
    if recipe.short_steps:
        cfg = TrainConfig(steps=recipe.short_steps, lr=recipe.lr, batch_size=recipe.finetune_batch_size,
                          schedule="cosine", seed=recipe.seed)
        train(model, data.train, cfg, default_augment(data.name, data.input_size))
    return model


def score_accuracy(space: PruningSpace, data: DataSplits, cand: Candidate, recipe: AccuracyRecipe) -> AccuracyResult:
    """Cost of the plan, and its validation accuracy if the candidate asks for it."""
    pruned = space.apply(cand.ratios)
    flops, params = space.count(pruned)
    if not cand.accuracy:
        return AccuracyResult(None, flops, params)
    recipe = recipe.for_candidate(cand)
    model = restore_accuracy(pruned, data, recipe)
    return AccuracyResult(accuracy(model, data.val, recipe.batch_size, recipe.val_limit), flops, params)


class DeviceTimer:
    """Times plans against the base on one device; holds the base's compiled call between plans."""

    def __init__(self, space: PruningSpace, meter: LatencyMeter) -> None:
        self.space, self.meter = space, meter
        self.example = meter.example(space.identity.in_channels, space.identity.input_size)
        self._base: InferenceCall = meter.prepare(space.base, self.example)

    def ratio(self, ratios: dict[str, float]) -> RatioStats:
        return self.meter.compare_calls(self.meter.prepare(self.space.apply(ratios), self.example), self._base)


def assemble(cand: Candidate, acc: AccuracyResult, budget: Budget, measured: RatioStats | None,
             lut: LatencyTable | None, space: PruningSpace, seconds: float) -> Evaluation:
    """One Evaluation from the parts, with the budget decided by the one rule in `Budget.met`."""
    ratio = ci = source = None
    if measured is not None:
        ratio, ci, source = measured.ratio, (measured.ci_low, measured.ci_high), "measured"
    elif budget.measured and cand.latency == "lut":
        if lut is None:
            raise ValueError("candidate asks for lookup-table latency but no table was built")
        ratio = lut.ratio(space.kept_for(cand.ratios))
        ci, source = (ratio, ratio), "lut"
    met = budget.met(acc.flops, acc.params, ci[1] if ci else None, ratio)
    return Evaluation(cand, acc.flops, acc.params, met, acc.val_acc, ratio, ci, source, seconds)


class LocalEvaluator:
    """Evaluates candidates one after another in this process; `should_stop` is asked before each."""

    def __init__(self, space: PruningSpace, data: DataSplits, budget: Budget, recipe: AccuracyRecipe,
                 meter: LatencyMeter | None, lut: LatencyTable | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.space, self.data, self.budget, self.recipe, self.lut = space, data, budget, recipe, lut
        self.timer = DeviceTimer(space, meter) if meter is not None and budget.measured else None
        self.should_stop = should_stop or (lambda: False)

    def __call__(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        return [self.evaluate(c) for c in candidates]

    def evaluate(self, cand: Candidate) -> Evaluation:
        if self.should_stop():
            raise EvaluationCancelled("the job was stopped during evaluation")
        start = time.perf_counter()
        measured = None
        if self.budget.measured and cand.latency == "measured":
            if self.timer is None:
                raise ValueError("a measured latency needs a latency meter (this evaluator only scores)")
            measured = self.timer.ratio(dict(cand.ratios))
        acc = score_accuracy(self.space, self.data, cand, self.recipe)
        return assemble(cand, acc, self.budget, measured, self.lut, self.space, time.perf_counter() - start)
