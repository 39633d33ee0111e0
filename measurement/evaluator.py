"""Evaluate candidate plans: cost, measured latency ratio against the base, validation accuracy.

Accuracy always follows the same recipe so candidates are comparable: apply the plan, recalibrate
BatchNorm on training batches, optionally fine-tune N steps, score on the validation split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn

from agents.base import Candidate, Evaluation
from agents.budget import Budget
from measurement.accuracy import accuracy, recalibrate_batchnorm
from measurement.latency import LatencyMeter
from measurement.lut import LatencyTable
from measurement.training import TrainConfig, default_augment, train
from search_spaces.datasets import DataSplits
from search_spaces.space import PruningSpace, count_cost


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


def restore_accuracy(model: nn.Module, data: DataSplits, recipe: AccuracyRecipe) -> nn.Module:
    """BN recalibration and the short fine-tune that every candidate gets before it is scored."""
    if recipe.bn_recalibration:
        recalibrate_batchnorm(model, data.train, recipe.recalibration_batches, recipe.finetune_batch_size, recipe.seed)
    if recipe.short_steps:
        cfg = TrainConfig(steps=recipe.short_steps, lr=recipe.lr, batch_size=recipe.finetune_batch_size,
                          schedule="cosine", seed=recipe.seed)
        train(model, data.train, cfg, default_augment(data.name, data.input_size))
    return model


def validation_accuracy(space: PruningSpace, data: DataSplits, ratios: dict[str, float],
                        recipe: AccuracyRecipe) -> float:
    model = restore_accuracy(space.apply(ratios), data, recipe)
    return accuracy(model, data.val, recipe.batch_size, recipe.val_limit)


class LocalEvaluator:
    """Evaluates candidates one after another in this process (the Ray backend distributes the same steps)."""

    def __init__(self, space: PruningSpace, data: DataSplits, budget: Budget, recipe: AccuracyRecipe,
                 meter: LatencyMeter | None, lut: LatencyTable | None = None) -> None:
        if budget.measured and meter is None:
            raise ValueError("a latency budget needs a latency meter")
        self.space, self.data, self.budget, self.recipe, self.meter = space, data, budget, recipe, meter
        self.lut = lut
        self._lut_base = lut.predict({d.name: d.channels for d in space.dimensions}) if lut else 1.0
        self.example = meter.example(space.identity.in_channels, space.identity.input_size) if meter else None
        self._base_call = meter.prepare(space.base, self.example) if meter and self.example is not None else None

    def __call__(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        return [self.evaluate(c) for c in candidates]

    def evaluate(self, cand: Candidate) -> Evaluation:
        start = time.perf_counter()
        pruned = self.space.apply(cand.ratios)
        flops, params = count_cost(pruned, self.space.example)
        ratio = ci = source = None
        if self.budget.measured and cand.latency == "measured":
            assert self.meter is not None and self.example is not None and self._base_call is not None
            stats = self.meter.compare_calls(self.meter.prepare(pruned, self.example), self._base_call)
            ratio, ci, source = stats.ratio, (stats.ci_low, stats.ci_high), "measured"
        elif self.budget.measured and cand.latency == "lut":
            if self.lut is None:
                raise ValueError("candidate asks for lookup-table latency but no table was built")
            ratio = self.lut.predict(self.space.kept_for(cand.ratios)) / self._lut_base
            ci, source = (ratio, ratio), "lut"
        val = None
        if cand.accuracy:
            recipe = self.recipe if cand.short_steps is None else replace(self.recipe, short_steps=cand.short_steps)
            model = restore_accuracy(pruned, self.data, recipe)
            val = accuracy(model, self.data.val, recipe.batch_size, recipe.val_limit)
        met = self.budget.met(flops, params, ci[1] if ci else None)
        return Evaluation(cand, flops, params, met, val, ratio, ci, source, time.perf_counter() - start)
