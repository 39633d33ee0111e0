"""HALP-style latency-aware resource allocation (Shen et al., NeurIPS 2022), confirmed on the device.

Every channel group's units are removed in the order the space's criterion removes them; each unit
carries an importance comparable across groups (`PruningSpace.unit_importance`: first-order Taylor
by default, as HALP). A greedy knapsack then walks from the unpruned model to the smallest one,
each step taking the removal with the least importance lost per unit of resource saved: latency
from the lookup table for a latency budget, MACs or params for the others. Looking a few steps
ahead on the table's grid lets a step cross a flat stretch of the latency staircase to the fast side
of the next kernel switch, which a one-step greedy never sees.

The walk gives a *path* of plans, least to most pruned, and the plan at a budget is a prefix of it.
Which prefix meets the budget is decided on the device (latency) or by exact counts: a search
over the path guided by the lookup table, which learns from every plan timed (`LatencyTable.observe`),
so it lands on the budget in a few timings instead of trusting a table that can be 10% off.

Importance is only an estimate of what fine-tuning will recover, so several variants are allocated
(importance raised to each `sharpness`; 0 = latency saved alone) and the uniform plan is one more
path; each variant's plan at the budget is scored like every candidate (BN recalibration, optional
short fine-tune; EagleEye) and the best one is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from agents.base import Agent, Candidate, Evaluation, SearchContext
from search_spaces.space import Dimension

ALLOCATED = ("channel", "head", "unstructured")  # dimensions with units to allocate; blocks and N:M stay off
SPARSE_STEPS = 32  # kept counts per fine-grained layer on the walk
LOOKAHEAD = 4  # grid steps a single removal may take at once
USED_ENOUGH = 0.02  # a plan within 2% under the budget ends its path's search
Kept = dict[str, int]


@dataclass
class Path:
    """Plans from least to most pruned, each with its predicted resource ratio, and the search over it."""

    name: str
    plans: list[Kept]
    predicted: list[float]
    lo: int = 0  # the most pruned index known not to meet the budget (0: the base)
    hi: int | None = None  # the least pruned index known to meet it
    probes: list[dict[str, Any]] = field(default_factory=list)
    best: Evaluation | None = None
    done: bool = False


class HALPAgent(Agent):
    name = "halp"
    resumes_by_replay = True  # deterministic given its history: a replay rebuilds it exactly

    def __init__(self, ctx: SearchContext, importance: str = "taylor", sharpness: Sequence[float] = (0.5, 1.0, 2.0),
                 include_uniform: bool = True, confirm_steps: int = 5, short_steps: int = 0) -> None:
        super().__init__(ctx)
        space = ctx.space
        self.widths = [d for d in space.dimensions if d.granularity in ALLOCATED]
        if not self.widths:
            raise ValueError("strategy.name: halp allocates channels, heads and single weights; this space's "
                             "dimensions are all on/off (blocks, N:M layers): use another strategy")
        if ctx.budget.measured and ctx.lut is None:
            raise ValueError("halp under a latency budget needs the lookup table")
        # Taylor needs training batches; a space built without them (tests, tools) ranks by magnitude
        self.importance_kind = importance if importance != "taylor" or space.has_calibration else "magnitude"
        self.sharpness = list(sharpness)
        self.confirm_steps, self.short_steps = confirm_steps, short_steps
        self.fixed = {d.name: 0.0 for d in space.dimensions if d not in self.widths}  # blocks stay
        self._ms_cache: dict[tuple[str, int, int], float] = {}
        self._layers = {layer.name: layer for layer in space.layers}
        self.paths = self._paths(include_uniform)
        self._pending: dict[int, Path] = {}

    # -- allocation --------------------------------------------------------------------------------
    def _paths(self, include_uniform: bool) -> list[Path]:
        space = self.ctx.space
        scores = space.importance_scores()
        # single weights: their own scores (magnitude, Wanda, OBD) compare across layers as they are
        values = ({n: v for n, v in scores.items()} if space.sparse else space.unit_importance(self.importance_kind))
        removal = {}  # importance of each unit in the order the criterion removes them
        for d in self.widths:
            order = torch.argsort(scores[d.name], stable=True) if d.name in scores else torch.arange(d.channels)
            v = values.get(d.name, torch.ones(d.channels))
            removal[d.name] = v[order]
        paths = [self._walk(f"sharpness {s:g}", {n: v.clamp_min(1e-12) ** s for n, v in removal.items()})
                 for s in self.sharpness]
        if include_uniform:
            paths.append(self._uniform_path())
        return paths

    def _steps(self, d: Dimension) -> list[int]:
        if self.ctx.budget.measured and self.ctx.lut is not None:
            return self.ctx.lut.steps(d.channels, d.min_kept, d.round_to)
        step = d.round_to
        if d.granularity == "unstructured":
            step = max(1, -(-d.channels // (SPARSE_STEPS * d.round_to))) * d.round_to
        return sorted({*range(d.min_kept, d.channels + 1, step), d.channels})

    def _walk(self, name: str, unit_value: Mapping[str, torch.Tensor]) -> Path:
        """Greedy knapsack from the base to the smallest plan: least importance lost per resource saved."""
        steps = {d.name: self._steps(d) for d in self.widths}
        lost = {n: torch.cat([torch.zeros(1), torch.cumsum(v.double(), 0)]).tolist() for n, v in unit_value.items()}
        pos = {n: len(s) - 1 for n, s in steps.items()}
        kept = {d.name: d.channels for d in self.ctx.space.dimensions}
        cost = self._cost_fn()
        now = cost(kept)
        base = now
        plans, predicted = [dict(kept)], [1.0]
        by_name = {d.name: d for d in self.widths}
        while True:
            choice: tuple[float, str, int, float] | None = None
            for n, p in pos.items():
                d = by_name[n]
                for j in range(1, min(LOOKAHEAD, p) + 1):
                    new = steps[n][p - j]
                    trial = {**kept, n: new}
                    saved = now - cost(trial)
                    if saved <= base * 1e-9:
                        continue
                    value = (lost[n][d.channels - new] - lost[n][d.channels - kept[n]]) / saved
                    if choice is None or value < choice[0]:
                        choice = (value, n, p - j, saved)
            if choice is None:
                break
            _, n, p_new, saved = choice
            pos[n], kept[n] = p_new, steps[n][p_new]
            now -= saved
            plans.append(dict(kept))
            predicted.append(now / base)
        return Path(name, plans, predicted)

    def _uniform_path(self, points: int = 200) -> Path:
        space = self.ctx.space
        top = max(d.max_ratio for d in self.widths)
        plans, seen = [], set()
        for i in range(points + 1):
            kept = space.kept_for(space.uniform(top * i / points))
            key = tuple(sorted(kept.items()))
            if key not in seen:
                seen.add(key)
                plans.append(kept)
        cost = self._cost_fn()
        base = cost(plans[0])
        return Path("uniform", plans, [cost(k) / base for k in plans])

    def _cost_fn(self) -> Callable[[Kept], float]:
        """A fast resource model for the walk: the lookup table's layers for latency (memoised per layer
        and width), else MACs or params scaled per layer with its kept input and output channels."""
        space, budget = self.ctx.space, self.ctx.budget
        if budget.measured:
            lut = self.ctx.lut
            assert lut is not None

            def latency(kept: Kept) -> float:
                total = 0.0
                for name, shape in space.layer_shapes(kept).items():
                    if shape is None:
                        continue
                    key = (name, shape[0], shape[1])
                    if key not in self._ms_cache:
                        self._ms_cache[key] = lut.layer_ms(self._layers[name], shape[0], shape[1])
                    total += self._ms_cache[key]
                return total + lut.overhead_ms
            return latency
        field_ = "flops" if budget.metric == "flops" else "params"

        def counted(kept: Kept) -> float:
            total = 0.0
            for name, shape in space.layer_shapes(kept).items():
                if shape is None:
                    continue
                info = self._layers[name]
                share = shape[1] / info.out_channels * (shape[2] if field_ == "params" else 1.0)
                if info.kind != "dwconv":
                    share *= shape[0] / info.in_channels
                total += getattr(info, field_) * share
            return total
        return counted

    # -- the search over each path -----------------------------------------------------------------
    def _ratios(self, kept: Kept) -> dict[str, float]:
        return {**self.fixed, **{d.name: 1 - kept[d.name] / d.channels for d in self.widths}}

    def _exact_ratio(self, kept: Kept) -> float:
        flops, params = self.ctx.space.cost(self._ratios(kept))
        return flops / self.ctx.space.flops if self.ctx.budget.metric == "flops" else params / self.ctx.space.params

    def _next_index(self, path: Path) -> int | None:
        """The next plan of the path to probe, or None when the path is settled.

        FLOPs and params: the exact budget prefix, found by bisection without evaluating anything.
        Latency: the least-pruned plan the corrected table predicts to meet the budget, inside what is
        still unknown; once a plan is known to meet it, steps back towards the unknown side by a quarter
        of the gap, so a table that is already right costs one timing more, not a bisection."""
        target = self.ctx.budget.target_ratio
        if not self.ctx.budget.measured:
            if path.probes:
                return None
            lo, hi = 0, len(path.plans) - 1
            if self._exact_ratio(path.plans[hi]) > target:
                return None
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if self._exact_ratio(path.plans[mid]) <= target else (mid, hi)
            return hi
        lut = self.ctx.lut
        assert lut is not None
        hi = path.hi if path.hi is not None else len(path.plans)
        if hi - path.lo <= 1 or len(path.probes) >= self.confirm_steps:
            return None
        if path.best is not None and (path.best.latency_ratio or 0) >= target * (1 - USED_ENOUGH):
            return None  # lands within USED_ENOUGH of the budget: more timings buy nothing
        guess = next((i for i in range(path.lo + 1, hi) if lut.ratio(path.plans[i]) <= target), None)
        if guess is not None:
            return guess
        if path.hi is None:
            return hi - 1  # nothing predicted to meet it: try the most pruned plan
        return hi - max(1, -(-(hi - path.lo) // 4))

    def suggest(self) -> list[Candidate]:
        out = []
        for path in self.paths:
            if path.done:
                continue
            i = self._next_index(path)
            if i is None:
                path.done = True
                continue
            cand = self.candidate(self._ratios(path.plans[i]), short_steps=self.short_steps or None,
                                  variant=path.name, index=i)
            self._pending[cand.id] = path
            out.append(cand)
            if not self.ctx.budget.measured:
                break  # exact budgets: one scoring per batch, each checkpointed (latency probes run in parallel)
        return out

    def observe(self, results: Sequence[Evaluation]) -> None:
        for r in results:
            path = self._pending.pop(r.candidate.id)
            i = int(r.candidate.tag["index"])
            path.probes.append({"index": i, "meets_budget": r.meets_budget, "val_acc": r.val_acc,
                                "latency_ratio": r.latency_ratio, "predicted": path.predicted[i]})
            if r.meets_budget:
                path.hi = i
                path.best = r  # the least pruned plan known to meet the budget
            else:
                path.lo = max(path.lo, i)
            self.ctx.emit({"type": "variant", "variant": path.name, "index": i, "meets_budget": r.meets_budget,
                           "val_acc": r.val_acc, "latency_ratio": r.latency_ratio})

    def best(self) -> Evaluation | None:
        found = [p.best for p in self.paths if p.best is not None]
        return max(found, key=lambda e: (e.val_acc or 0.0, -(e.latency_ratio or 0.0)), default=None)

    def planned_evaluations(self) -> int:
        return len(self.paths) * (self.confirm_steps if self.ctx.budget.measured else 1)

    def summary(self) -> dict[str, Any]:
        chosen = self.best()
        return {"importance": self.importance_kind, "lookahead": LOOKAHEAD,
                "lut_scale": self.ctx.lut.scale if self.ctx.lut is not None else None,
                "variants": [{"name": p.name, "path_length": len(p.plans), "probes": p.probes,
                              "val_acc": p.best.val_acc if p.best else None,
                              "latency_ratio": p.best.latency_ratio if p.best else None,
                              "chosen": chosen is not None and p.best is chosen} for p in self.paths]}
