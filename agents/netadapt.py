"""NetAdapt (Yang et al. 2018): shrink the resource by a decaying slice per iteration, greedily.

Iteration k must bring the plan's resource down by ΔR_k = initial_fraction · decay^k of the base
(never below the budget). For every group, the smallest extra pruning that reaches that target is
found on the lookup table (or exact counts for FLOPs/params); each such candidate gets a short
fine-tune and is scored on validation, all of an iteration's candidates in parallel. The most
accurate one becomes the current plan and is confirmed on the device: iterations stop once the
*measured* plan meets the budget. Candidates are derived from the base weights each time (the
fine-tune does not carry across iterations), so one candidate's cost is independent of history
and every evaluation can run on any worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agents.base import Agent, Candidate, Evaluation, SearchContext

MAX_HALVINGS = 4  # an iteration's slice may shrink to 1/16 before the search gives up


class NetAdaptAgent(Agent):

    def __init__(self, ctx: SearchContext, initial_fraction: float = 0.1, decay: float = 0.96,
                 short_steps: int = 20, max_iterations: int = 40,
                 warm_start: Mapping[str, float] | None = None) -> None:
        super().__init__(ctx)
        self.initial_fraction, self.decay = initial_fraction, decay
        self.short_steps, self.max_iterations = short_steps, max_iterations
        self.current: dict[str, float] = {d.name: 0.0 for d in ctx.space.dimensions}
        self.current_resource = 1.0
        self.correction = 1.0  # measured / lookup-table latency ratio of the last confirmed plan
        self.iteration = 0
        self.iterations: list[dict[str, Any]] = []
        self._phase = "propose"  # propose -> confirm -> propose ... -> done
        self._best: Evaluation | None = None
        self._done = False
        if warm_start:
            self._start_from(warm_start)

    def _start_from(self, plan: Mapping[str, float]) -> None:
        """Begin at `plan` (a previous run's) instead of the base: it is confirmed first, so a plan that still
        meets the budget on new weights ends the search after one evaluation; otherwise iterations go on from it."""
        start = {d.name: min(float(plan.get(d.name, 0.0)), d.max_ratio) for d in self.ctx.space.dimensions}
        if not any(start.values()):
            self.ctx.emit({"type": "warm_start_skipped", "reason": "the plan names none of this model's groups"})
            return
        self.current, self.current_resource = start, self.ctx.resource_ratio(start)
        self.iterations.append({"iteration": 0, "group": "warm_start", "val_acc": None,
                                "resource_ratio": self.current_resource, "target": None, "candidates": 0})
        self._phase = "confirm"
        self.ctx.emit({"type": "warm_start", "resource_ratio": self.current_resource})

    def planned_evaluations(self) -> int | None:
        return None

    def _target(self, scale: float = 1.0) -> float:
        """The next iteration's resource target, in lookup-table terms for a latency budget. The table
        can be off by 10% and more near a kernel switch, so the floor is the budget corrected by how far
        the device disagreed with the table at the last confirmation: without it, a table that
        under-predicts leaves the iterations stuck one channel at a time just above the budget."""
        step = self.initial_fraction * self.decay ** self.iteration * scale
        floor = self.ctx.budget.target_ratio * (0.98 / self.correction if self.ctx.budget.measured else 1.0)
        return max(floor, self.current_resource - step)

    def _shrink(self, group: str, target: float) -> dict[str, float] | None:
        """The least extra pruning of `group` (in channel steps) that brings the plan to `target`."""
        dim = self.ctx.space.dimension(group)
        kept_now = dim.kept(self.current[group])
        options = list(range(kept_now - dim.round_to, dim.min_kept - 1, -dim.round_to))
        lo, hi, found = 0, len(options) - 1, None
        while lo <= hi:  # resource falls as kept falls: bisect for the largest kept that fits
            mid = (lo + hi) // 2
            ratios = {**self.current, group: 1 - options[mid] / dim.units}
            if self.ctx.resource_ratio(ratios) <= target:
                found, hi = ratios, mid - 1
            else:
                lo = mid + 1
        return found

    def suggest(self) -> list[Candidate]:
        if self._done or self.iteration >= self.max_iterations:
            return []
        if self._phase == "confirm":
            return [self.candidate(self.current, short_steps=self.short_steps, iteration=self.iteration,
                                   confirm=True)]
        for halvings in range(MAX_HALVINGS + 1):  # no single group can remove the whole slice: take less
            target = self._target(0.5 ** halvings)
            batch = []
            for dim in self.ctx.space.dimensions:
                ratios = self._shrink(dim.name, target)
                if ratios is not None:
                    batch.append(self.candidate(ratios, latency="lut" if self.ctx.budget.measured else "none",
                                                short_steps=self.short_steps, iteration=self.iteration,
                                                group=dim.name, target=target))
            if batch:
                return batch
        self._done = True  # no group can be pruned further: the budget is out of reach
        return []

    def observe(self, results: Sequence[Evaluation]) -> None:
        if self._phase == "confirm":
            (r,) = results
            self.iterations[-1]["measured_meets_budget"] = r.meets_budget
            self.iterations[-1]["measured_latency_ratio"] = r.latency_ratio
            if r.latency_ratio and self.current_resource > 0:
                self.correction = r.latency_ratio / self.current_resource
            self.iteration += 1
            self._phase = "propose"
            if r.meets_budget:
                self._best, self._done = r, True
            return
        scored = [r for r in results if r.val_acc is not None]
        if not scored:
            self._done = True
            return
        chosen = max(scored, key=lambda r: r.val_acc or 0.0)
        self.current = dict(chosen.candidate.ratios)
        self.current_resource = self.ctx.resource_ratio(self.current)
        record = {"iteration": self.iteration, "group": chosen.candidate.tag["group"],
                  "val_acc": chosen.val_acc, "resource_ratio": self.current_resource,
                  "target": chosen.candidate.tag["target"], "candidates": len(results)}
        self.iterations.append(record)
        self.ctx.emit({"type": "netadapt_iteration", **record})
        if self.ctx.budget.measured:
            self._phase = "confirm"  # the lookup table proposed; the device decides
            return
        self.iteration += 1
        if chosen.meets_budget:
            self._best, self._done = chosen, True

    def best(self) -> Evaluation | None:
        return self._best

    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self._next_id, "current": self.current, "current_resource": self.current_resource,
                "correction": self.correction,
                "iteration": self.iteration, "iterations": self.iterations, "phase": self._phase,
                "done": self._done, "best": self._best.candidate.id if self._best else None}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Evaluation]) -> None:
        self._next_id, self.current = state["next_id"], state["current"]
        self.current_resource, self.iteration = state["current_resource"], state["iteration"]
        self.correction = state.get("correction", 1.0)
        self.iterations, self._phase, self._done = state["iterations"], state["phase"], state["done"]
        self._best = self.find(history, state["best"])

    def summary(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "final_ratios": self.current}
