"""The two baselines: one global knob, bisected until the plan just meets the budget.

`uniform`: the knob is the ratio every group gets. `global`: the knob is the fraction of all
channels removed, allocated across groups by one global ranking of (group-normalised) channel
importance, as Torch-Pruning's global pruning does. The cost is monotone in the knob, so the
smallest knob that meets the budget is found by bisection on measured cost, not guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from agents.base import Agent, Candidate, Evaluation, SearchContext
from search_spaces.space import PruningSpace

Knob = Callable[[float], dict[str, float]]


def global_ranking(space: PruningSpace) -> Knob:
    """Ratios per group from removing the globally least important `fraction` of all channels."""
    scores = space.importance_scores()
    dims = [d for d in space.dimensions if d.name in scores]
    if not dims:
        raise ValueError("strategy.name: global ranks channels, heads or weights; this space's dimensions are all "
                         "on/off (blocks, N:M layers): use another strategy")
    flat = torch.cat([scores[d.name] for d in dims])

    def knob(fraction: float) -> dict[str, float]:
        n = round(fraction * flat.numel())
        if n <= 0:
            return {d.name: 0.0 for d in space.dimensions}
        threshold = torch.kthvalue(flat, min(n, flat.numel())).values
        ratios = {d.name: 0.0 for d in space.dimensions}
        for d in dims:
            removed = int((scores[d.name] <= threshold).sum())
            ratios[d.name] = min(removed / d.units, d.max_ratio)
        return ratios

    return knob


class BisectionAgent(Agent):
    """Finds the smallest knob value meeting the budget. Candidates need cost only; accuracy is
    measured once, on the returned plan, by the job."""

    def __init__(self, ctx: SearchContext, knob: Knob, steps: int = 12) -> None:
        super().__init__(ctx)
        self.knob, self.steps = knob, steps
        self.hi = max(d.max_ratio for d in ctx.space.dimensions)
        self.lo = 0.0
        self.done_steps = 0
        self._best: Evaluation | None = None
        self._checked_hi = False

    def planned_evaluations(self) -> int:
        return self.steps + 1

    def suggest(self) -> list[Candidate]:
        if not self._checked_hi:
            return [self.candidate(self.knob(self.hi), accuracy=False, knob=self.hi)]
        if self.done_steps >= self.steps or self._best is None:
            return []
        mid = (self.lo + self.hi) / 2
        return [self.candidate(self.knob(mid), accuracy=False, knob=mid)]

    def observe(self, results: Sequence[Evaluation]) -> None:
        for r in results:
            knob = float(r.candidate.tag["knob"])
            if not self._checked_hi:
                self._checked_hi = True
            else:
                self.done_steps += 1
            if r.meets_budget:
                self.hi = knob
                if self._best is None or knob <= float(self._best.candidate.tag["knob"]):
                    self._best = r
            else:
                self.lo = knob
            self.ctx.emit({"type": "bisection", "knob": knob, "meets_budget": r.meets_budget,
                           "lo": self.lo, "hi": self.hi})

    def best(self) -> Evaluation | None:
        return self._best

    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self._next_id, "lo": self.lo, "hi": self.hi, "done_steps": self.done_steps,
                "checked_hi": self._checked_hi, "best": self._best.candidate.id if self._best else None}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Evaluation]) -> None:
        self._next_id, self.lo, self.hi = state["next_id"], state["lo"], state["hi"]
        self.done_steps, self._checked_hi = state["done_steps"], state["checked_hi"]
        self._best = self.find(history, state["best"])


class UniformAgent(BisectionAgent):
    """One pruning ratio for every width dimension."""

    def __init__(self, ctx: SearchContext, steps: int = 12) -> None:
        if all(d.granularity == "block" for d in ctx.space.dimensions):
            raise ValueError("strategy.name: uniform prunes width or sparsity and keeps every block; this space "
                             "has only blocks: use another strategy")
        super().__init__(ctx, ctx.space.uniform, steps)


class GlobalAgent(BisectionAgent):
    """One importance threshold across every group (the ranking is global)."""

    def __init__(self, ctx: SearchContext, steps: int = 12) -> None:
        super().__init__(ctx, global_ranking(ctx.space), steps)
