"""Per-layer latency lookup table (NetAdapt): predict a plan's latency without building the model.

Each prunable layer is timed alone (conv + BN + ReLU, or linear) on the target device at a grid
of input/output channel counts; a plan's latency is the sum of its layers, interpolated on that
grid, fitted so the base model's prediction equals its measured latency: plus the rest (adds,
activations, framework and per-operator overhead) shared equally by the layers when they add up to
less than the base, or scaled down when they add up to more. The rest is per operator, not per
model: it does not shrink with a layer's channels, but a dropped block takes its layers' share with
it. As one constant it did not: MobileNetV2 at batch 1 has 6.4 ms of rest in an 11 ms network, and
the table predicted 0.72x for a depth plan that ran at 0.35x. A negative constant is no model of
anything: on MobileNetV2 at batch 32 the layers timed alone summed to 80.3 ms against a 64.5 ms
network, the constant came out at -15.7 ms, and it doubled every predicted saving (a plan predicted
at 0.35x ran at 0.54x; on the 13 plans that job timed, the median error was 39%, and 17% with the
scale). Tables are cached on disk per device setting.

The grid is about 16 round channel counts per axis (multiples of a power of two): latency is a
staircase in the channel count (kernels switch at certain widths), so strategies that allocate on
the table (`steps`) choose kept counts on measured points rather than between them.

Layers timed alone do not add up to the whole network exactly (caches, per-operator overhead that
does not shrink with the channels): a table off by 10% near a budget steers every table-driven
search. So the table also learns from every whole plan the job times on the device (`observe`):
predicted savings are scaled by the least-squares factor between predicted and measured savings
(1 - ratio), a correction that is exact at the base and fitted where the search makes decisions.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from measurement.latency import LatencyMeter
from search_spaces.kinds import WIDTH
from search_spaces.layers import LayerInfo
from search_spaces.space import PruningSpace

GRID_POINTS = 16  # per channel axis
PASSES = 2  # each grid point is timed once per pass, the passes in opposite orders; the faster median is kept
SCALE_BOUNDS = (0.25, 4.0)  # a fitted savings scale outside this says the pairs are noise, not a model error
PRIOR_WEIGHT = 0.25  # (1 - 0.5)^2: the prior scale 1 counts as much as one plan at 0.5x
ProgressFn = Callable[[int, int], None]


def grid_step(channels: int) -> int:
    """The grid's spacing: the smallest power of two that gives at most GRID_POINTS points."""
    return 1 << max(0, math.ceil(math.log2(max(1, channels) / GRID_POINTS)))


def _grid(channels: int, prunable: bool) -> list[int]:
    if not prunable:
        return [channels]
    step = grid_step(channels)
    return sorted({*range(step, channels + 1, step), channels})


def layer_module(info: LayerInfo, cin: int, cout: int) -> tuple[nn.Module, torch.Size]:
    """A stand-alone copy of the layer at the given channel counts, and its input shape (batch 1)."""
    if info.kind == "linear":  # in_size: tokens per sample (transformers), 1 after a flatten
        tokens = [info.in_size] if info.in_size > 1 else []
        return nn.Linear(cin, cout, bias=info.bias), torch.Size([1, *tokens, cin])
    groups = cin if info.kind == "dwconv" else info.groups
    if groups > 1 and info.kind != "dwconv":  # a grouped conv keeps its groups: time the nearest valid widths
        cin, cout = (max(groups, round(c / groups) * groups) for c in (cin, cout))
    conv = nn.Conv2d(cin, cout, info.kernel, info.stride, info.padding, groups=groups, bias=info.bias)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU()).eval(), torch.Size([1, cin, info.in_size, info.in_size])


class LatencyTable:
    def __init__(self, space: PruningSpace, meter: LatencyMeter, cache_dir: str | Path | None = None,
                 repeats: int = 7) -> None:
        self.space, self.meter, self.repeats = space, meter, repeats
        self.cache_path = Path(cache_dir) / f"{self._device_key()}.json" if cache_dir else None
        self.entries: dict[str, dict[str, float]] = self._load()
        self.overhead_ms = 0.0  # the base's time beyond its layers timed alone, carried by the layers in equal shares
        self.layer_scale = 1.0  # < 1 when the layers timed alone add up to more than the whole base model
        self.observed: list[tuple[float, float]] = []  # (table's raw ratio, measured ratio) of whole plans
        self.scale = 1.0  # measured savings / predicted savings, fitted on `observed`
        if space.sparse:
            raise ValueError("a latency lookup table models channel and depth plans; fine-grained zeros run "
                             "at dense speed")
        widths = [d for d in space.dimensions if d.granularity in WIDTH]
        self._prunable_out = {m for d in widths for m in d.members}
        self._prunable_in = {c for d in widths for c in d.consumers}

    def _device_key(self) -> str:
        identity = json.dumps({**self.meter.settings.device_identity(), "passes": PASSES}, sort_keys=True)
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    def _load(self) -> dict[str, dict[str, float]]:
        if self.cache_path and self.cache_path.is_file():
            data: dict[str, dict[str, float]] = json.loads(self.cache_path.read_text())["entries"]
            return data
        return {}

    def _save(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": self.meter.settings.describe(), "entries": self.entries}))
        tmp.replace(self.cache_path)

    @staticmethod
    def _key(info: LayerInfo) -> str:
        grouped = f"|g{info.groups}" if info.kind == "conv" and info.groups > 1 else ""  # old keys stay valid
        return f"{info.kind}|{info.in_channels}|{info.out_channels}|k{info.kernel}|s{info.stride}|p{info.padding}" \
               f"|hw{info.in_size}|b{int(info.bias)}{grouped}"

    def _axes(self, info: LayerInfo) -> tuple[list[int], list[int]]:
        outs = _grid(info.out_channels, info.name in self._prunable_out)
        if info.kind == "dwconv":
            return outs, outs  # depthwise: input channels follow output channels
        return _grid(info.in_channels, info.name in self._prunable_in), outs

    def build(self, progress: ProgressFn | None = None) -> int:
        """Time every missing grid point; returns how many were timed. Each point is timed once per pass, the
        passes in opposite orders, and the faster median kept: a VM's slow spell lasts several consecutive
        timings, and a one-pass table on an AMD EPYC VM held 49 of 1824 points at over 1.3x their time
        re-taken minutes later, which priced width plans 21% slow (bench/results/lut_replay_epyc_avx512_b1.md)."""
        todo = []
        for info in {self._key(i): i for i in self.space.layers}.values():
            table = self.entries.setdefault(self._key(info), {})
            cins, couts = self._axes(info)
            pairs = zip(couts, couts, strict=True) if info.kind == "dwconv" else ((a, b) for a in cins for b in couts)
            todo += [(info, a, b) for a, b in pairs if f"{a},{b}" not in table]
        batch = self.meter.settings.batch_size
        order = [p for n in range(PASSES) for p in (todo if n % 2 == 0 else todo[::-1])]
        for n, (info, cin, cout) in enumerate(order, 1):
            module, shape = layer_module(info, cin, cout)
            x = torch.randn(batch, *shape[1:])
            ms = self.meter.measure(module, x, repeats=self.repeats).median_ms
            table, point = self.entries[self._key(info)], f"{cin},{cout}"
            table[point] = min(ms, table.get(point, math.inf))  # a timing only errs slow
            if progress:
                progress(n, len(order))
        if todo:
            self._save()
        return len(todo)

    def layer_ms(self, info: LayerInfo, cin: int, cout: int) -> float:
        """Bilinear interpolation on the layer's grid (clamped at the grid's edges)."""
        table = self.entries[self._key(info)]
        cins, couts = self._axes(info)
        if info.kind == "dwconv":
            return self.layer_scale * _interp1(couts, [table[f"{c},{c}"] for c in couts], cout)
        rows = [_interp1(couts, [table[f"{a},{b}"] for b in couts], cout) for a in cins]
        return self.layer_scale * _interp1(cins, rows, cin)

    def layer_cost(self, info: LayerInfo, cin: int, cout: int) -> float:
        """A present layer's predicted milliseconds: its own, plus its share of the rest (module docstring)."""
        return self.layer_ms(info, cin, cout) + self.overhead_ms / len(self.space.layers)

    def breakdown(self, kept: Mapping[str, int]) -> dict[str, float]:
        """Predicted milliseconds per layer for the plan with these kept counts (0 for a dropped block's)."""
        shapes = self.space.layer_shapes(kept)
        return {i.name: 0.0 if (s := shapes[i.name]) is None else self.layer_cost(i, s[0], s[1])
                for i in self.space.layers}

    def predict(self, kept: Mapping[str, int]) -> float:
        return sum(self.breakdown(kept).values())

    def _unpruned(self) -> dict[str, int]:
        return self.space.kept_for({})

    def raw_ratio(self, kept: Mapping[str, int]) -> float:
        """The layers' sum relative to the unpruned model, before any whole-plan correction."""
        return self.predict(kept) / self.predict(self._unpruned())

    def ratio(self, kept: Mapping[str, int]) -> float:
        """Predicted latency of a plan relative to the unpruned model, corrected by the plans timed so far."""
        return 1 - self.scale * (1 - self.raw_ratio(kept))

    def observe(self, kept: Mapping[str, int], measured_ratio: float) -> None:
        """Learn from one whole plan timed on the device (see the module docstring)."""
        self.observed.append((self.raw_ratio(kept), measured_ratio))
        self.scale = fit_scale(self.observed)

    def steps(self, dim_channels: int, min_kept: int, round_to: int) -> list[int]:
        """Kept counts on the table's grid for a dimension of `dim_channels` units (ascending): the widths
        whose latency was measured, so an allocation on them never falls between two points of a step."""
        points = {c for c in _grid(dim_channels, True) if c >= min_kept and c % round_to == 0}
        return sorted(points | {dim_channels})

    def calibrate(self, base_ms: float) -> None:
        """Fit the unpruned model's prediction to its measured latency: the rest as a constant when the layers
        add up to less, the layers scaled down when they add up to more (never a negative constant)."""
        self.overhead_ms, self.layer_scale = 0.0, 1.0
        layers = self.predict(self._unpruned())
        if layers <= base_ms:
            self.overhead_ms = base_ms - layers
        else:
            self.layer_scale = base_ms / layers


def fit_scale(pairs: list[tuple[float, float]]) -> float:
    """Least-squares factor s in (1 - measured) = s * (1 - predicted), shrunk towards 1 by a prior worth
    one plan at half the base's latency (PRIOR_WEIGHT): unregularised, a single plan near the base (small
    savings, noisy ratio) set s to 0.39 and the next prediction was 29% off (bench/results/plan_latency.md)."""
    den = sum((1 - p) ** 2 for p, _ in pairs) + PRIOR_WEIGHT
    s = (sum((1 - p) * (1 - m) for p, m in pairs) + PRIOR_WEIGHT) / den
    return min(max(s, SCALE_BOUNDS[0]), SCALE_BOUNDS[1])


def _interp1(xs: list[int], ys: list[float], x: float) -> float:
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x) - 1
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + t * (ys[i + 1] - ys[i])
