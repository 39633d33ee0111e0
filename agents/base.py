"""The agent protocol, modelled on Ray Tune's Searcher: `suggest` candidates, `observe` their results.

Agents never evaluate anything themselves, so the same agent runs in-process, on Ray, or resumed
from a checkpoint; the driver decides how and where each candidate is measured.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from agents.budget import Budget
from search_spaces.space import PruningSpace

if TYPE_CHECKING:
    from measurement.lut import LatencyTable

Event = dict[str, Any]
Emit = Callable[[Event], None]


LatencyMode = Literal["measured", "lut", "none"]


@dataclass(frozen=True)
class Candidate:
    """A plan to evaluate. Cost (MACs, params) is always computed; `accuracy` asks for validation
    accuracy; `latency` says how the latency ratio is obtained when the budget is latency: timed on
    the target against the base ("measured"), predicted by the lookup table ("lut"), or skipped."""

    id: int
    ratios: Mapping[str, float]
    accuracy: bool = True
    latency: LatencyMode = "measured"
    short_steps: int | None = None  # fine-tune steps before scoring; None = the job's default
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
        """A JSON-ready row of the search history (and, with `from_record`, of a checkpoint)."""
        c = self.candidate
        return {
            "id": c.id, "ratios": dict(c.ratios), "tag": dict(c.tag), "accuracy": c.accuracy, "latency": c.latency,
            "short_steps": c.short_steps,
            "flops": self.flops, "params": self.params, "val_acc": self.val_acc,
            "latency_ratio": self.latency_ratio, "latency_ci": list(self.latency_ci) if self.latency_ci else None,
            "latency_source": self.latency_source, "meets_budget": self.meets_budget,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Evaluation:
        cand = Candidate(r["id"], dict(r["ratios"]), r["accuracy"], r["latency"], r["short_steps"], dict(r["tag"]))
        ci = tuple(r["latency_ci"]) if r["latency_ci"] else None
        return cls(cand, r["flops"], r["params"], r["meets_budget"], r["val_acc"], r["latency_ratio"],
                   ci, r["latency_source"], r["seconds"])


@dataclass
class SearchContext:
    """What every agent gets: the space, the resolved budget, a seed, an event sink, and (for
    latency budgets) a lookup table calibrated on the target device for cheap predictions."""

    space: PruningSpace
    budget: Budget
    seed: int
    emit: Emit = lambda event: None
    lut: LatencyTable | None = None
    workdir: Path | None = None  # the job folder, for agent state that lives on disk (e.g. an Optuna study)

    def predicted_latency_ratio(self, ratios: Mapping[str, float]) -> float:
        """Lookup-table latency of a plan relative to the base (needs `lut`)."""
        if self.lut is None:
            raise ValueError("no latency lookup table in this search context")
        return self.lut.ratio(self.space.kept_for(ratios))

    def record(self, results: Sequence[Evaluation]) -> None:
        """Every plan timed on the device calibrates the lookup table (`LatencyTable.observe`). Called by
        the driver before the agent observes the results, and by a replay in the same order, so a
        resumed search predicts exactly what the original did."""
        if self.lut is None:
            return
        for e in results:
            if e.latency_source == "measured" and e.latency_ratio is not None:
                self.lut.observe(self.space.kept_for(e.candidate.ratios), e.latency_ratio)

    def resource_ratio(self, ratios: Mapping[str, float]) -> float:
        """The budget's resource for a plan relative to the base: exact for FLOPs/params, LUT for latency."""
        if self.budget.metric == "latency_ms":
            return self.predicted_latency_ratio(ratios)
        flops, params = self.space.cost(ratios)
        return (flops / self.space.flops) if self.budget.metric == "flops" else params / self.space.params


class ResumeMismatchError(RuntimeError):
    """A replayed agent asked for other candidates than the checkpoint recorded (another seed,
    version or configuration): the search must start over instead."""


class Agent(abc.ABC):
    # Agents whose state is a seeded computation over their history (an Optuna sampler, a DDPG
    # learner) resume by replaying it: cheaper to rebuild than to serialise, RNG states included.
    resumes_by_replay: ClassVar[bool] = False

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self._next_id = 0

    @property
    def name(self) -> str:
        """The strategy name this class is declared under in `agents.strategies` (not repeated here)."""
        from agents.registry import name_of  # the declarations import agent modules: import on use

        return name_of(type(self))

    def candidate(self, ratios: Mapping[str, float], accuracy: bool = True, latency: LatencyMode = "measured",
                  short_steps: int | None = None, **tag: Any) -> Candidate:
        self._next_id += 1
        return Candidate(self._next_id, dict(ratios), accuracy, latency, short_steps, tag)

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

    def summary(self) -> dict[str, Any]:
        """Strategy-specific results for the report (curves, reward trace, Pareto front...)."""
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        """JSON-ready state taken between batches (nothing pending), or None if this agent cannot
        resume (its job is then re-run from the start after a crash)."""
        return {"replay": True} if self.resumes_by_replay else None

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Evaluation]) -> None:
        """Continue from `state_dict()`; `history` holds every evaluation observed before it."""
        if not state.get("replay"):
            raise NotImplementedError(f"{self.name} cannot resume")
        self.replay(history)

    def replay(self, history: Sequence[Evaluation]) -> None:
        """Re-drive suggest/observe with the recorded results, evaluating nothing. Progress events
        are muted: the job's event log already holds them."""
        recorded = {e.candidate.id: e for e in history}
        emit, self.ctx.emit = self.ctx.emit, lambda event: None
        try:
            done = 0
            while done < len(history):
                results = []
                for cand in self.suggest():
                    rec = recorded.get(cand.id)
                    if rec is None or rec.candidate.ratios.keys() != cand.ratios.keys() or any(
                            not math.isclose(rec.candidate.ratios[k], v, rel_tol=1e-9, abs_tol=1e-12)
                            for k, v in cand.ratios.items()):
                        raise ResumeMismatchError(f"{self.name}: candidate {cand.id} differs from the checkpoint's")
                    results.append(replace(rec, candidate=cand))
                if not results:
                    raise ResumeMismatchError(f"{self.name} finished before replaying its {len(history)} evaluations")
                self.ctx.record(results)
                self.observe(results)
                done += len(results)
        finally:
            self.ctx.emit = emit

    @staticmethod
    def find(history: Sequence[Evaluation], candidate_id: int | None) -> Evaluation | None:
        return next((e for e in history if e.candidate.id == candidate_id), None)

    def save(self, folder: Path) -> list[str]:
        """Write strategy artifacts (e.g. a trained policy) into `folder`; returns the file names."""
        return []
