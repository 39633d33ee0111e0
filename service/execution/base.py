"""The execution seam: one interface for where a job's work runs, this process or a Ray cluster.

A job does two kinds of work. Timings (base latency, the lookup table, every candidate's ratio, the
fresh-process re-time) must run on the target device and nowhere else; accuracy can run anywhere.
`Execution.time` runs a timing function where the job's candidates are timed, `evaluator` opens the
evaluator the search calls, and `close` shuts down what the evaluators started. Stopping is the
caller's `should_stop` flag (a cancel request), passed through to everything that runs: each backend
polls it between and during its work and raises `EvaluationCancelled`. The pipeline never asks which
backend it has.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from agents.budget import Budget
from agents.driver import EvaluateFn
from measurement.latency import LatencyMeter
from measurement.lut import LatencyTable
from search_spaces.datasets import DataSplits
from search_spaces.space import PruningSpace

if TYPE_CHECKING:
    from service.execution.evaluation import AccuracyRecipe

T = TypeVar("T")
StopFn = Callable[[], bool]


class EvaluationCancelled(RuntimeError):
    """The job was stopped while work was running; the backend's work is already stopped."""


class Execution(abc.ABC):
    """Where a job times and scores. Use as a context manager: leaving it closes the evaluators."""

    def __init__(self, meter: LatencyMeter, should_stop: StopFn | None = None) -> None:
        self.meter = meter
        self._asked_to_stop = should_stop
        self._open: list[Any] = []

    def should_stop(self) -> bool:
        """Polled by running work: the caller's flag (a cancel request) is up."""
        return self._asked_to_stop is not None and self._asked_to_stop()

    @abc.abstractmethod
    def time(self, fn: Callable[..., T], *args: Any) -> tuple[T, str]:
        """`fn(meter, *args)` run where the job's candidates are timed; returns its result and where it ran
        ("local", or the Ray node id)."""

    @abc.abstractmethod
    def _evaluator(self, space: PruningSpace, data: DataSplits, budget: Budget, recipe: AccuracyRecipe,
                   lut: LatencyTable | None) -> EvaluateFn:
        """A new evaluator for one search."""

    def evaluator(self, space: PruningSpace, data: DataSplits, budget: Budget, recipe: AccuracyRecipe,
                  lut: LatencyTable | None) -> EvaluateFn:
        """The evaluator a search calls: times plans on the device (latency budgets) and scores their accuracy."""
        evaluate = self._evaluator(space, data, budget, recipe, lut)
        self._open.append(evaluate)
        return evaluate

    def close(self) -> None:
        for evaluate in self._open:
            if hasattr(evaluate, "shutdown"):
                evaluate.shutdown()
        self._open.clear()

    def __enter__(self) -> Execution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
