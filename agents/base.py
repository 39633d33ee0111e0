"""The agent protocol, modelled on Ray Tune's Searcher: `suggest` candidates, `observe` their results.

Agents never evaluate anything themselves, so the same agent runs in-process, on Ray, or resumed
from a checkpoint; the driver decides how and where each candidate is measured.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agents.budget import Budget
from search_spaces.space import PruningSpace

Event = dict[str, Any]
Emit = Callable[[Event], None]


@dataclass(frozen=True)
class Candidate:
    """A plan to evaluate. `accuracy`: whether validation accuracy is needed (cost is always computed)."""

    id: int
    ratios: Mapping[str, float]
    accuracy: bool = True
    tag: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    candidate: Candidate
    flops: int
    params: int
    meets_budget: bool
    val_acc: float | None = None
    latency_ratio: float | None = None  # candidate / base, measured interleaved or predicted
    latency_ci: tuple[float, float] | None = None
    latency_source: str | None = None  # measured | lut
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """A JSON-ready row of the search history."""
        return {
            "id": self.candidate.id, "ratios": dict(self.candidate.ratios), "tag": dict(self.candidate.tag),
            "flops": self.flops, "params": self.params, "val_acc": self.val_acc,
            "latency_ratio": self.latency_ratio, "latency_ci": list(self.latency_ci) if self.latency_ci else None,
            "latency_source": self.latency_source, "meets_budget": self.meets_budget,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SearchContext:
    space: PruningSpace
    budget: Budget
    seed: int
    emit: Emit = lambda event: None


class Agent(abc.ABC):
    name: ClassVar[str]

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self._next_id = 0

    def candidate(self, ratios: Mapping[str, float], accuracy: bool = True, **tag: Any) -> Candidate:
        self._next_id += 1
        return Candidate(self._next_id, dict(ratios), accuracy, tag)

    @abc.abstractmethod
    def suggest(self) -> list[Candidate]:
        """Candidates to evaluate next; an empty list means the search is finished."""

    @abc.abstractmethod
    def observe(self, results: Sequence[Evaluation]) -> None:
        """Results of the last suggested candidates, each exactly once."""

    @abc.abstractmethod
    def best(self) -> Evaluation | None:
        """The chosen plan so far (meeting the budget), or None."""

    def planned_evaluations(self) -> int | None:
        """How many evaluations the agent expects in total, for progress bars (None if unknown)."""
        return None
