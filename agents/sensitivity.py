"""Sensitivity scan: prune one group at a time, then one accuracy-loss threshold sets every ratio.

Phase 1 evaluates every (group, ratio) pair alone, plus the unpruned model, in one parallel batch
(validation accuracy after BN recalibration, no fine-tune). Phase 2 needs no evaluation: for a
threshold t, each group gets the largest ratio whose interpolated accuracy drop is at most t;
bisection on t finds the smallest loss whose plan meets the budget (exact FLOPs/params, or the
latency lookup table). The chosen plan is then evaluated for real; for a measured latency budget,
a miss caused by lookup-table error doubles t and tries again (the last try takes the most pruned
plan the curves allow). Cheap, but blind to interactions
between layers. A binary dimension (a block, an N:M layer) is scanned once, switched on, and is
switched on by every threshold at or above its drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from agents.base import Agent, Candidate, Evaluation, SearchContext
from search_spaces.layers import Dimension

MAX_CONFIRMATIONS = 4


def ratio_at(ratios: Sequence[float], drops: Sequence[float], threshold: float, cap: float) -> float:
    """Largest ratio whose linearly interpolated drop is <= threshold (curve made monotone first)."""
    points = [(0.0, 0.0)]
    worst = 0.0
    for r, d in zip(ratios, drops, strict=True):
        worst = max(worst, d)
        points.append((r, worst))
    best = 0.0
    for (r0, d0), (r1, d1) in pairwise(points):
        if d1 <= threshold:
            best = r1
            continue
        best = r0 + (r1 - r0) * (threshold - d0) / (d1 - d0) if d1 > d0 else r0
        break
    return min(best, cap)


class SensitivityAgent(Agent):

    def __init__(self, ctx: SearchContext, ratios: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 threshold_steps: int = 20) -> None:
        super().__init__(ctx)
        self.ratios = sorted(ratios)
        self.threshold_steps = threshold_steps
        self.base_acc: float | None = None
        self.curves: dict[str, list[float]] = {}  # group -> accuracy at each ratio
        self.threshold: float | None = None
        self.confirmations = 0
        self._scanned = False
        self._best: Evaluation | None = None
        self._pending: list[Candidate] = []

    def _scan_ratios(self, dim: Dimension) -> list[float]:
        """A binary dimension (block, N:M layer) has one point to scan: switched on."""
        return [dim.max_ratio] if dim.binary else [r for r in self.ratios if r <= dim.max_ratio + 1e-9]

    def planned_evaluations(self) -> int:
        return sum(len(self._scan_ratios(d)) for d in self.ctx.space.dimensions) + 2

    # -- phase 2: threshold -> plan ---------------------------------------------------------------
    def drops(self, group: str) -> list[float]:
        assert self.base_acc is not None
        return [self.base_acc - acc for acc in self.curves[group]]

    def plan_for(self, threshold: float) -> dict[str, float]:
        return {d.name: (d.max_ratio if self.drops(d.name)[0] <= threshold else 0.0) if d.binary
                else ratio_at(self.ratios, self.drops(d.name), threshold, d.max_ratio)
                for d in self.ctx.space.dimensions}

    def _fits(self, ratios: dict[str, float]) -> bool:
        margin = 0.98 if self.ctx.budget.measured else 1.0  # leave room for lookup-table error
        return self.ctx.resource_ratio(ratios) <= self.ctx.budget.target_ratio * margin

    def _solve_threshold(self, low: float) -> float | None:
        """Smallest threshold >= low whose plan fits the budget, by bisection."""
        high = max(max(self.drops(d.name)) for d in self.ctx.space.dimensions) + 1e-6
        if not self._fits(self.plan_for(high)):
            return None
        if self._fits(self.plan_for(low)):
            return low
        for _ in range(self.threshold_steps):
            mid = (low + high) / 2
            if self._fits(self.plan_for(mid)):
                high = mid
            else:
                low = mid
        return high

    # -- protocol --------------------------------------------------------------------------------
    def suggest(self) -> list[Candidate]:
        if not self._scanned:
            self._scanned = True
            batch = [self.candidate({}, latency="none", short_steps=0, group=None, ratio=0.0)]
            batch += [self.candidate({d.name: r}, latency="none", short_steps=0, group=d.name, ratio=r)
                      for d in self.ctx.space.dimensions for r in self._scan_ratios(d)]
            self._pending = batch
            return batch
        if self._best is not None or self.confirmations >= MAX_CONFIRMATIONS or self.base_acc is None:
            return []
        # A miss means the table under-predicted this plan: double the threshold, and let the last
        # confirmation take the most pruned plan the curves allow, so a reachable budget always ends
        # with a plan instead of a search that ran out of confirmations one nudge short of it.
        start = 0.0 if self.threshold is None else self.threshold * 2 + 1e-3
        if self.confirmations == MAX_CONFIRMATIONS - 1:
            start = max(max(self.drops(d.name)) for d in self.ctx.space.dimensions)
        threshold = self._solve_threshold(start)
        if threshold is None:
            return []
        self.threshold = threshold
        self.confirmations += 1
        return [self.candidate(self.plan_for(threshold), threshold=threshold)]

    def observe(self, results: Sequence[Evaluation]) -> None:
        for r in results:
            tag = r.candidate.tag
            if "group" in tag:
                self._record_scan(r)
            elif r.meets_budget:
                self._best = r
            self.ctx.emit({"type": "sensitivity_plan", "threshold": tag.get("threshold"),
                           "meets_budget": r.meets_budget, "val_acc": r.val_acc} if "threshold" in tag else
                          {"type": "sensitivity_point", "group": tag["group"], "ratio": tag["ratio"],
                           "val_acc": r.val_acc})
        if self._pending and all(c.id in {r.candidate.id for r in results} for c in self._pending):
            self._pending = []
            for d in self.ctx.space.dimensions:
                self.ctx.emit({"type": "sensitivity_curve", "group": d.name,
                               "ratios": self._scan_ratios(d) if d.binary else self.ratios,
                               "val_acc": self.curves.get(d.name, [])})

    def _record_scan(self, r: Evaluation) -> None:
        group, ratio = r.candidate.tag["group"], r.candidate.tag["ratio"]
        acc = float(r.val_acc or 0.0)
        if group is None:
            self.base_acc = acc
            return
        if self.ctx.space.dimension(group).binary:
            self.curves[group] = [acc]
            return
        curve = self.curves.setdefault(group, [acc] * len(self.ratios))
        idx = self.ratios.index(ratio)
        curve[idx] = acc
        for j in range(idx + 1, len(self.ratios)):  # ratios above a group's cap keep the capped value
            if self.ratios[j] > self.ctx.space.dimension(group).max_ratio + 1e-9:
                curve[j] = acc

    def best(self) -> Evaluation | None:
        return self._best

    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self._next_id, "base_acc": self.base_acc, "curves": self.curves,
                "threshold": self.threshold, "confirmations": self.confirmations, "scanned": self._scanned,
                "best": self._best.candidate.id if self._best else None}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Evaluation]) -> None:
        self._next_id, self.base_acc, self.curves = state["next_id"], state["base_acc"], state["curves"]
        self.threshold, self.confirmations = state["threshold"], state["confirmations"]
        self._scanned, self._best = state["scanned"], self.find(history, state["best"])

    def summary(self) -> dict[str, Any]:
        return {"base_val_acc": self.base_acc, "ratios": self.ratios, "curves": self.curves,
                "threshold": self.threshold, "confirmations": self.confirmations}
