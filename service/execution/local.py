"""Everything in this process, one candidate after another: the default backend, and the tests' reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.budget import Budget
from measurement.lut import LatencyTable
from search_spaces.datasets import DataSplits
from search_spaces.space import PruningSpace
from service.execution.base import EvaluationCancelled, Execution, T
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator


class LocalExecution(Execution):
    def time(self, fn: Callable[..., T], *args: Any) -> tuple[T, str]:
        if self.should_stop():
            raise EvaluationCancelled("the job was stopped before a timing")
        return fn(self.meter, *args), "local"

    def _evaluator(self, space: PruningSpace, data: DataSplits, budget: Budget, recipe: AccuracyRecipe,
                   lut: LatencyTable | None) -> LocalEvaluator:
        return LocalEvaluator(space, data, budget, recipe, self.meter if budget.measured else None, lut,
                              should_stop=self.should_stop)
