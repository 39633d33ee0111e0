"""HALP-style latency-aware resource allocation (Shen et al., NeurIPS 2022), confirmed on the device.

Every channel group's units are removed in the order the space's criterion removes them; each unit
carries an importance comparable across groups (`PruningSpace.unit_importance`: first-order Taylor,
as HALP; or a measured curve, below). A greedy knapsack then walks from the unpruned model to the smallest one,
each step taking the removal with the least importance lost per unit of resource saved: latency
from the lookup table for a latency budget, MACs or params for the others. A step may jump any
number of points on the table's grid, so it crosses a flat stretch of the latency staircase to the
fast side of the next kernel switch, which a one-step greedy never sees (it stopped above budgets).

The walk gives a *path* of plans, least to most pruned, and the plan at a budget is a prefix of it.
Which prefix meets the budget is decided on the device (latency) or by exact counts: a search
over the path guided by the lookup table, which learns from every plan timed (`LatencyTable.observe`),
so it lands on the budget in a few timings instead of trusting a table that can be 10% off. Where one
step of the walk crosses the budget with a large saving, the plan below it is filled back up to the
budget (`HALPAgent._give_back`): the knapsack solved at the budget, not only along the path.

What a removal loses is estimated per *variant*, and no estimate is right everywhere: `taylor` sums
first-order terms (HALP's), `magnitude` sums weight norms, `sensitivity` reads a measured curve per
dimension (each pruned alone at a few ratios, scored like every candidate), `kind^p` raises each term
to the power p, and `uniform` is the one-knob path. Each variant's plan at the budget is scored like
every candidate (BN recalibration, optional short fine-tune: EagleEye's signal) and the best returned.

Residual blocks (a space with `block` dimensions) are knapsack items too, on the `sensitivity` path
only: each is scanned once, dropped alone, and its measured drop is what removing it loses, against
the latency its layers cost in the table. First-order sums have no value for a whole block, so the
other variants keep every block. At batch 1 a block's per-operator time is what thinner layers cannot
remove: MobileNetV2 with 90% of every layer's channels gone still runs at 0.54x of its base.
Block drops do not add up: each *run* of adjacent droppable blocks (ResNet-20's whole 28x28 stage) is
also scanned dropped at once, and the removal that empties a run costs what the run lost together beyond
the sum of its blocks' drops (`HALPAgent._joint`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from agents.base import Agent, Candidate, Evaluation, SearchContext
from search_spaces.layers import Dimension, LayerInfo

VARIANT_PATTERN = r"^(?P<kind>uniform|sensitivity|taylor|magnitude)(\^(?P<power>[0-9]*\.?[0-9]+))?$"
VARIANT = re.compile(VARIANT_PATTERN)
DEFAULT_VARIANTS = ("sensitivity", "taylor", "uniform")
SPARSE_STEPS = 32  # kept counts per fine-grained layer on the walk
LOOKAHEAD = 16  # grid steps one removal may take at once: the whole grid, to reach past any flat stretch
USED_ENOUGH = 0.02  # a plan within 2% under the budget ends its path's search
FILL_MARGIN = 0.03  # the fill aims this far under a latency budget: aimed 1% under, it timed 0.5% over (ResNet-20 b1)
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
    loss: Callable[[str, int], float] | None = None  # a walk's value of each removal (None: the uniform path)
    steps: dict[str, list[int]] = field(default_factory=dict)  # each item's kept counts on the walk
    filled: dict[str, Any] | None = None  # what the one fill of the bracket's gap aimed at (`HALPAgent._fill`)


class HALPAgent(Agent):
    resumes_by_replay = True  # deterministic given its history: a replay rebuilds it exactly

    def __init__(self, ctx: SearchContext, variants: Sequence[str] = DEFAULT_VARIANTS,
                 scan_ratios: Sequence[float] = (0.25, 0.5, 0.75, 0.9), max_scan: int = 60,
                 confirm_steps: int = 5, short_steps: int = 0, scan_steps: int = 0) -> None:
        super().__init__(ctx)
        space = ctx.space
        self.widths = [d for d in space.dimensions if not d.binary]  # units to allocate; N:M stays off
        self.blocks = [d for d in space.dimensions if d.binary and d.granularity == "block"]  # sensitivity only
        if not self.widths:
            raise ValueError("strategy.name: halp allocates channels, heads and single weights; this space's "
                             "dimensions are all on/off (blocks, N:M layers): use another strategy")
        if ctx.budget.measured and ctx.lut is None:
            raise ValueError("halp under a latency budget needs the lookup table")
        self.variants = [parse_variant(v) for v in variants]
        self.scan_ratios = thinned(sorted(set(scan_ratios)), max(1, max_scan // len(self.widths)))
        self.confirm_steps, self.short_steps, self.scan_steps = confirm_steps, short_steps, scan_steps
        self.fixed = {d.name: 0.0 for d in space.dimensions if d not in self.widths and d not in self.blocks}
        self._ms_cache: dict[tuple[str, int, int], float] = {}
        self._layers = {layer.name: layer for layer in space.layers}
        self.drops: dict[str, list[float]] = {}  # sensitivity: accuracy drop per scan ratio, per dimension
        self.block_drops: dict[str, float] = {}  # sensitivity: accuracy drop with the block dropped alone
        self.runs = block_runs(self.blocks, self._layers)  # name -> adjacent droppable blocks, scanned together
        self.run_drops: dict[str, float] = {}  # sensitivity: beyond its blocks' drops, what a run loses at once
        self.base_acc: float | None = None
        self._scanned = not any(kind == "sensitivity" for kind, _ in self.variants)
        self.paths: list[Path] = [] if not self._scanned else self._paths()
        self._pending: dict[int, Path | None] = {}

    # -- allocation --------------------------------------------------------------------------------
    def _paths(self) -> list[Path]:
        paths = []
        for kind, sharp in self.variants:
            label = kind if sharp == 1 else f"{kind}^{sharp:g}"
            items = [*self.widths, *(self.blocks if kind == "sensitivity" else [])]
            paths.append(self._uniform_path() if kind == "uniform" else
                         self._walk(label, self._loss(kind, sharp), items))
        return paths

    def _loss(self, kind: str, sharp: float) -> Callable[[str, int], float]:
        """What keeping `k` units of a dimension loses, for one variant: the summed importance of the
        units the criterion removes (raised to `sharp` each), or the measured accuracy drop (sensitivity:
        a curve per dimension, so removing most of a layer costs what it really costs, not a sum of
        first-order terms: a Taylor allocation left the 28x28 stage of ResNet-20 2 of 16 channels)."""
        space = self.ctx.space
        by_name = {d.name: d for d in self.widths}
        if kind == "sensitivity":
            assert self.base_acc is not None

            def dropped(n: str, k: int) -> float:
                if n in self.block_drops:
                    return self.block_drops[n] ** sharp if k == 0 else 0.0
                d = by_name[n]
                return _interp_drop(self.scan_ratios, self.drops[n], 1 - k / d.units) ** sharp
            return dropped
        scores = space.importance_scores()
        # single weights: their own scores (magnitude, Wanda, OBD) compare across layers as they are
        if space.sparse:
            values = scores
        else:
            values = space.unit_importance(kind if kind != "taylor" or space.has_calibration else "magnitude")
        lost: dict[str, list[float]] = {}
        for d in self.widths:  # importance of each unit in the order the criterion removes them
            order = torch.argsort(scores[d.name], stable=True) if d.name in scores else torch.arange(d.units)
            v = values.get(d.name, torch.ones(d.units))[order].double().clamp_min(1e-12) ** sharp
            lost[d.name] = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(v, 0)]).tolist()
        return lambda n, k: lost[n][by_name[n].units - k]

    def _steps(self, d: Dimension) -> list[int]:
        if d.binary:
            return [0, 1]
        if self.ctx.budget.measured and self.ctx.lut is not None:
            return self.ctx.lut.steps(d.units, d.min_kept, d.round_to)
        step = d.round_to
        if d.granularity == "unstructured":
            step = max(1, -(-d.units // (SPARSE_STEPS * d.round_to))) * d.round_to
        return sorted({*range(d.min_kept, d.units + 1, step), d.units})

    def _walk(self, name: str, loss: Callable[[str, int], float], items: Sequence[Dimension]) -> Path:
        """Greedy knapsack from the base to the smallest plan: least loss per resource saved. A block's
        removal saves what its layers cost at their current widths, so it competes with thinning them."""
        steps = {d.name: self._steps(d) for d in items}
        pos = {n: len(s) - 1 for n, s in steps.items()}
        kept = {d.name: d.units for d in self.ctx.space.dimensions}
        cost = self._cost_fn()
        now = cost(kept)
        base = now
        plans, predicted = [dict(kept)], [1.0]
        while True:
            choice: tuple[float, str, int, float] | None = None
            for n, p in pos.items():
                for j in range(1, min(LOOKAHEAD, p) + 1):
                    new = steps[n][p - j]
                    saved = now - cost({**kept, n: new})
                    if saved <= base * 1e-9:
                        continue
                    value = (loss(n, new) - loss(n, kept[n]) + self._joint(kept, n, new)) / saved
                    if choice is None or (value, -saved) < (choice[0], -choice[3]):
                        choice = (value, n, p - j, saved)
            if choice is None:
                break
            _, n, p_new, saved = choice
            pos[n], kept[n] = p_new, steps[n][p_new]
            now -= saved
            plans.append(dict(kept))
            predicted.append(now / base)
        return Path(name, plans, predicted, loss=loss, steps=steps)

    def _joint(self, kept: Kept, n: str, new: int) -> float:
        """What setting `n` to `new` kept units adds to the plan's loss beyond `n`'s own term: a run's
        measured excess once every block of it is dropped. On ResNet-20 at batch 32 and 0.4x, blocks
        valued alone let the walk drop the whole 28x28 stage, and the plan lost the final choice to the
        uniform baseline (0.907 after fine-tuning)."""
        out = 0.0
        for name, run in self.runs.items():
            if n in run:
                before = all(kept[b] == 0 for b in run)
                after = all((new if b == n else kept[b]) == 0 for b in run)
                out += (after - before) * self.run_drops.get(name, 0.0)
        return out

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
                        self._ms_cache[key] = lut.layer_cost(self._layers[name], shape[0], shape[1])
                    total += self._ms_cache[key]
                return total
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
        return {**self.fixed, **{d.name: 1 - kept[d.name] / d.units for d in (*self.widths, *self.blocks)}}

    def _exact_ratio(self, kept: Kept) -> float:
        flops, params = self.ctx.space.cost(self._ratios(kept))
        return flops / self.ctx.space.flops if self.ctx.budget.metric == "flops" else params / self.ctx.space.params

    def _next_index(self, path: Path) -> int | None:
        """The next plan of the path to probe, or None when the path is settled.

        FLOPs and params: the exact budget prefix, found by bisection without evaluating anything, with
        removals given back up to the budget (`_give_back`).
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
            filled = self._give_back(path, hi, target)  # the walk's counts are per layer: checked exactly
            if filled is not None and self._exact_ratio(filled[0]) <= target:
                self._insert(path, hi, *filled)
            return hi
        lut = self.ctx.lut
        assert lut is not None
        hi = path.hi if path.hi is not None else len(path.plans)
        if len(path.probes) >= self.confirm_steps:
            return None
        if path.best is not None and (path.best.latency_ratio or 0) >= target * (1 - USED_ENOUGH):
            return None  # lands within USED_ENOUGH of the budget: more timings buy nothing
        if hi - path.lo <= 1:
            return self._fill(path)
        guess = next((i for i in range(path.lo + 1, hi) if lut.ratio(path.plans[i]) <= target), None)
        if guess is not None:
            return guess
        if path.hi is None:
            return hi - 1  # nothing predicted to meet it: try the most pruned plan
        return hi - max(1, -(-(hi - path.lo) // 4))

    def _fill(self, path: Path) -> int | None:
        """Once per path, when its plan that meets a latency budget leaves part of it unused and the next
        plan up misses: that plan with removals given back up to the budget (`_give_back`), timed next.

        Between the bracket's ends the device is read off the line through their two timings (the base,
        1.0, when nothing less pruned was timed): exact at both ends, where the table alone was 3-5% off
        at ResNet-20's batch-1 bracket. Returns the new plan's index, inserted between the bracket's
        ends, or None when nothing fits."""
        if path.filled is not None or path.loss is None or path.best is None or path.hi is None:
            return None
        lut, hi, lo = self.ctx.lut, path.hi, path.lo
        assert lut is not None
        timed = {p["index"]: p["latency_ratio"] for p in path.probes if p["latency_ratio"] is not None}
        p_hi, m_hi = lut.ratio(path.plans[hi]), timed[hi]
        p_lo, m_lo = lut.ratio(path.plans[lo]), timed.get(lo, 1.0)  # lo is timed, or the base
        slope = (p_lo - p_hi) / (m_lo - m_hi) if m_lo > m_hi and p_lo > p_hi else 1.0
        aim = p_hi + (self.ctx.budget.target_ratio * (1 - FILL_MARGIN) - m_hi) * slope  # the corrected table's
        cap = 1 - (1 - aim) / lut.scale  # the same, in the walk's raw ratio
        path.filled = {"from": path.predicted[hi], "cap": cap, "aim": aim, "slope": slope}
        filled = self._give_back(path, hi, cap)
        path.filled["given_back"] = filled is not None
        if filled is None:
            return None
        self._insert(path, hi, *filled)
        return hi

    @staticmethod
    def _insert(path: Path, i: int, kept: Kept, predicted: float) -> None:
        """A plan put into the path at index `i`: what the search knows of the plans after it moves up."""
        path.plans.insert(i, kept)
        path.predicted.insert(i, predicted)
        if path.hi is not None and path.hi >= i:
            path.hi += 1
        for probe in path.probes:
            if probe["index"] >= i:
                probe["index"] += 1

    def _give_back(self, path: Path, hi: int, cap: float) -> tuple[Kept, float] | None:
        """The path's plan `hi` with removals given back, most value regained per unit of resource first,
        while the walk's cost stays within `cap` (a ratio of the base's), with its ratio; None when
        nothing fits. A step of the walk can save a lot at once (a dropped block, a jump past a flat
        stretch of the staircase), so a path can cross the budget in one step: on ResNet-20 at batch 1 it
        went from 0.560x (missed 0.55x) to 0.486x, leaving 12% of the budget unused. Filling the plan
        under that step solves the knapsack at the budget, not only along the path."""
        if path.loss is None:
            return None
        loss, cost = path.loss, self._cost_fn()
        base = cost(path.plans[0])
        kept = dict(path.plans[hi])
        pos = {n: s.index(kept[n]) for n, s in path.steps.items()}
        now = cost(kept)
        while True:
            choice: tuple[float, str, int, float] | None = None
            for n, p in pos.items():
                for j in range(1, min(LOOKAHEAD, len(path.steps[n]) - 1 - p) + 1):
                    new = path.steps[n][p + j]
                    after = cost({**kept, n: new})
                    regained = loss(n, kept[n]) - loss(n, new) - self._joint(kept, n, new)
                    if after > cap * base or regained < 0:  # 0: a drop under the scan's noise, still worth the budget
                        continue
                    value = regained / max(after - now, base * 1e-9)
                    if choice is None or value > choice[0]:
                        choice = (value, n, p + j, after)
            if choice is None:
                break
            _, n, pos[n], now = choice
            kept[n] = path.steps[n][pos[n]]
        return None if kept == path.plans[hi] else (kept, now / base)

    def suggest(self) -> list[Candidate]:
        if not self._scanned:  # sensitivity: each dimension alone at each scan ratio, plus the base
            if self._pending:
                return []
            def scan(ratios: dict[str, float], group: str | None, ratio: float) -> Candidate:
                return self.candidate(ratios, latency="none", short_steps=self.scan_steps, group=group, ratio=ratio)
            batch = [scan({}, None, 0.0)]
            batch += [scan({d.name: min(r, d.max_ratio)}, d.name, r) for d in self.widths for r in self.scan_ratios]
            batch += [scan({d.name: 1.0}, d.name, 1.0) for d in self.blocks]
            batch += [scan(dict.fromkeys(run, 1.0), name, 1.0) for name, run in self.runs.items()]
            self._pending = {c.id: None for c in batch}
            return batch
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

    def _record_scan(self, results: Sequence[Evaluation]) -> None:
        for r in results:
            group, ratio = r.candidate.tag["group"], r.candidate.tag["ratio"]
            if group is None:
                self.base_acc = float(r.val_acc or 0.0)
            elif group in {d.name for d in self.blocks}:
                self.block_drops[group] = -float(r.val_acc or 0.0)  # made a drop once the base is known
            elif group in self.runs:
                self.run_drops[group] = -float(r.val_acc or 0.0)
            else:
                self.drops.setdefault(group, [0.0] * len(self.scan_ratios))[self.scan_ratios.index(ratio)] = \
                    -float(r.val_acc or 0.0)  # made a drop once the base is known
        if self._pending:
            return
        assert self.base_acc is not None
        for n, accs in self.drops.items():
            worst, curve = 0.0, []
            for a in accs:  # monotone: pruning more never recovers accuracy
                worst = max(worst, self.base_acc + a)
                curve.append(worst)
            self.drops[n] = curve
        self.block_drops = {n: max(0.0, self.base_acc + a) for n, a in self.block_drops.items()}
        self.run_drops = {g: max(0.0, self.base_acc + a - sum(self.block_drops[b] for b in self.runs[g]))
                          for g, a in self.run_drops.items()}  # the excess over the blocks' own drops
        self._scanned = True
        self.paths = self._paths()
        self.ctx.emit({"type": "halp_scan", "base_val_acc": self.base_acc, "ratios": self.scan_ratios,
                       "drops": self.drops, "block_drops": self.block_drops, "run_drops": self.run_drops})

    def observe(self, results: Sequence[Evaluation]) -> None:
        scans = [r for r in results if "group" in r.candidate.tag]
        for r in scans:
            self._pending.pop(r.candidate.id)
        if scans:
            self._record_scan(scans)
        for r in results:
            if "group" in r.candidate.tag:
                continue
            path = self._pending.pop(r.candidate.id)
            assert path is not None
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
        scan = 0 if self._scanned and not self.drops else \
            1 + len(self.widths) * len(self.scan_ratios) + len(self.blocks) + len(self.runs)
        return scan + len(self.variants) * (self.confirm_steps if self.ctx.budget.measured else 1)

    def summary(self) -> dict[str, Any]:
        chosen = self.best()
        return {"variants_asked": [f"{k}^{p:g}" for k, p in self.variants], "lookahead": LOOKAHEAD,
                "scan": {"base_val_acc": self.base_acc, "ratios": self.scan_ratios, "drops": self.drops,
                         "block_drops": self.block_drops, "run_drops": self.run_drops},
                "lut_scale": self.ctx.lut.scale if self.ctx.lut is not None else None,
                "variants": [{"name": p.name, "path_length": len(p.plans), "probes": p.probes, "fill": p.filled,
                              "val_acc": p.best.val_acc if p.best else None,
                              "latency_ratio": p.best.latency_ratio if p.best else None,
                              "chosen": chosen is not None and p.best is chosen} for p in self.paths]}


def parse_variant(text: str) -> tuple[str, float]:
    """`kind` or `kind^power`: how a variant values what it removes (see `HALPAgent._loss`)."""
    m = VARIANT.match(text)
    if m is None:
        raise ValueError(f"strategy.variants: {text!r} is not uniform, sensitivity, taylor or magnitude "
                         "(optionally ^power, e.g. taylor^2)")
    return m["kind"], float(m["power"] or 1.0)


def thinned(ratios: Sequence[float], keep: int) -> list[float]:
    """At most `keep` of the sorted scan ratios, evenly spread and ending at the largest: on MobileNetV2
    (25 groups) the full 4-ratio scan took 101 of HALP's 114 evaluations, 1652 of its 1905 seconds."""
    if keep >= len(ratios):
        return list(ratios)
    last = len(ratios) - 1
    return [ratios[last - round(i * last / keep)] for i in reversed(range(keep))]


def _interp_drop(ratios: Sequence[float], drops: Sequence[float], ratio: float) -> float:
    """Accuracy drop at `ratio`, linear between the scanned points (0 at ratio 0)."""
    xs, ys = [0.0, *ratios], [0.0, *drops]
    if ratio >= xs[-1]:
        return ys[-1]
    i = max(k for k in range(len(xs)) if xs[k] <= ratio)
    t = (ratio - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + t * (ys[i + 1] - ys[i])


def block_runs(blocks: Sequence[Dimension], layers: Mapping[str, LayerInfo]) -> dict[str, tuple[str, ...]]:
    """Maximal runs of two or more droppable blocks with no other layer between them, in forward order,
    each named by its blocks joined with "+": ResNet-20's layer1.0-1.2, layer2.1-2.2 and layer3.1-3.2
    (layer2.0 and layer3.0 change shape and stay)."""
    runs: list[list[Dimension]] = []
    for d in sorted(blocks, key=lambda d: d.layer.index):
        prev = runs[-1][-1] if runs else None
        if prev is not None and d.layer.index == max(layers[c].index for c in prev.covers) + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    return {"+".join(d.name for d in run): tuple(d.name for d in run) for run in runs if len(run) > 1}
