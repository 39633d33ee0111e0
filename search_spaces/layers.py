"""The vocabulary every space kind shares: a model's prunable layers as a search sees them, one
searchable dimension over them, and the errors that name a layer.

Kept apart from `space.py` so that the kind modules (`search_spaces/space_kinds/`), which `space.py`
runs, can import it without importing the space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from search_spaces.space_kinds.base import GRANULARITIES

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


class SpaceError(ValueError):
    """A bad request against the space: unknown group, ratio out of range, unknown layer."""


class LayerError(SpaceError):
    """Torch-Pruning or PyTorch failed while scoring or pruning one dimension: names its layer, so a
    job never ends with a bare exception from inside them."""

    def __init__(self, layer: str, step: str, exc: BaseException) -> None:
        self.layer = layer
        super().__init__(f"keep_layers: {step} layer {layer!r} failed inside Torch-Pruning "
                         f"({type(exc).__name__}: {exc}); add it to keep_layers")


@dataclass(frozen=True)
class LayerInfo:
    """A conv/linear layer as AMC's state sees it (values before pruning)."""

    index: int
    name: str
    kind: str  # conv | dwconv | linear
    in_channels: int
    out_channels: int
    stride: int
    kernel: int
    params: int
    flops: int  # multiply-accumulates at the space's input size, batch 1
    in_size: int = 1  # input height (= width) the layer sees
    padding: int = 0
    groups: int = 1
    bias: bool = False


@dataclass(frozen=True)
class Dimension:
    """One searchable dimension: the search decides how many of its `units` stay."""

    name: str
    units: int  # channels, heads, 1 block, weights of a layer, or M (nm)
    min_kept: int
    round_to: int
    members: tuple[str, ...]  # layers whose output channels (or weights) this dimension removes
    consumers: tuple[str, ...]  # layers whose input channels this dimension removes
    layer: LayerInfo  # the root layer, for agents that want a descriptor
    granularity: str = "channel"  # a key of kinds.GRANULARITIES
    covers: tuple[str, ...] = ()  # block: every conv/linear layer that goes with it
    unit_out: int = 1  # output channels of each member per unit (heads: 3 * head_dim of qkv)
    unit_in: int = 1  # input channels of each consumer per unit (heads: head_dim of proj)
    channel_groups: int = 1  # grouped layers in the group: each of this many slices loses the same channels
    root_layer: str = ""  # the layer Torch-Pruning's group starts from, where it is not `name` (heads: qkv)

    @property
    def root(self) -> str:
        return self.root_layer or self.name

    @property
    def binary(self) -> bool:
        return GRANULARITIES[self.granularity].binary

    @property
    def max_ratio(self) -> float:
        return 1 - self.min_kept / self.units

    def is_on(self, ratio: float) -> bool:
        """A binary dimension is switched on (block dropped, layer N:M) from half its maximum ratio."""
        return ratio >= self.max_ratio / 2

    def snap(self, ratio: float) -> float:
        """The ratio a plan records: binary dimensions take 0 or their maximum, others are clamped."""
        if self.binary:
            return self.max_ratio if self.is_on(ratio) else 0.0
        return min(max(ratio, 0.0), self.max_ratio)

    def kept(self, ratio: float) -> int:
        top = 1 if self.binary else 1 - 1e-12
        if not 0 <= ratio <= top:
            raise SpaceError(f"ratio for {self.granularity} dimension {self.name!r} must be in "
                             f"[0, {'1]' if self.binary else '1)'}, got {ratio}")
        if self.binary:
            return self.min_kept if self.is_on(ratio) else self.units
        want = self.units * (1 - ratio)
        rounded = math.floor(want / self.round_to + 0.5) * self.round_to
        return max(self.min_kept, min(self.units, rounded))


def _layer_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    assert isinstance(m, nn.modules.conv._ConvNd)
    # Depthwise: one channel in and out per group, so input channels follow output channels. A grouped
    # conv (and a depthwise one with a channel multiplier) is a "conv" that keeps its `groups`.
    return "dwconv" if m.groups > 1 and m.groups == m.in_channels == m.out_channels else "conv"


def _first(v: int | tuple[int, ...] | str) -> int:
    if isinstance(v, str):
        return 1
    return int(v[0]) if isinstance(v, tuple) else int(v)


def describe_layers(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Every conv/linear layer in execution order with its shape, params and MACs at batch 1."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[LayerInfo] = []

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if any(info.name == names[m] for info in seen):
            return
        params = sum(p.numel() for p in m.parameters(recurse=False))
        bias = getattr(m, "bias", None) is not None
        if isinstance(m, nn.Linear):
            spatial, cin, cout = out[0].numel() // m.out_features, m.in_features, m.out_features
            info = LayerInfo(len(seen), names[m], "linear", cin, cout, 1, 1, params, spatial * cin * cout,
                             in_size=spatial, bias=bias)  # in_size: tokens per sample (1 after a flatten)
        else:
            assert isinstance(m, nn.modules.conv._ConvNd)
            cin, cout = m.in_channels, m.out_channels
            flops = out[0, 0].numel() * cout * (cin // m.groups) * math.prod(m.kernel_size)
            info = LayerInfo(len(seen), names[m], _layer_kind(m), cin, cout, _first(m.stride), _first(m.kernel_size),
                             params, flops, in_size=int(inputs[0].shape[-1]), padding=_first(m.padding),
                             groups=m.groups, bias=bias)
        seen.append(info)

    _trace_prunable(model, example, hook)
    return seen


def _trace_prunable(model: nn.Module, example: torch.Tensor, hook: Callable[..., None]) -> None:
    """One batch-1 forward pass with `hook` on every conv/linear layer."""
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            model.eval()
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()


def count_cost(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) of `model` at batch 1, as Torch-Pruning counts them."""
    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    return int(macs), int(params)


def output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The layer that produces the model's output (the classifier head); it is never pruned."""
    last: list[nn.Module] = []
    _trace_prunable(model, example, lambda m, i, o: last.append(m))
    return last[-1] if last else None
