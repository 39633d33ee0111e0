"""`unstructured`: the weights of one layer, zeroed by a fine-grained criterion (a size budget: dense
kernels still run the zeros)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from search_spaces import sparsity
from search_spaces.layers import Dimension
from search_spaces.space_kinds.base import GranularityInfo, SpaceKindRules

if TYPE_CHECKING:
    from search_spaces.space import PruningSpace


class UnstructuredKind(SpaceKindRules):
    name = "unstructured"
    summary = "single weights; params budget"
    order = 2
    granularities: ClassVar[dict[str, GranularityInfo]] = {"unstructured": GranularityInfo("weights", sparse=True)}

    def find(self, space: PruningSpace, model: nn.Module, max_ratio: float) -> list[Dimension]:
        """One per conv/linear layer but the classifier (and `keep_layers`)."""
        modules = dict(model.named_modules())
        dims = []
        for layer in sparsity.maskable_layers(space, model):
            weights = modules[layer.name].weight.numel()
            # Wanda compares weights within each output row: keep whole rows' worth so every row loses
            # the same count and the plan's count is exact.
            unit = modules[layer.name].weight.shape[0] if space.weight_criterion == "wanda" else 1
            min_kept = math.ceil(max(1, math.ceil(weights * (1 - max_ratio))) / unit) * unit
            dims.append(Dimension(layer.name, weights, min_kept, unit, (layer.name,), (), layer, "unstructured"))
        return dims

    def mask(self, space: PruningSpace, dim: Dimension, kept: int) -> torch.Tensor:
        return sparsity.unstructured_mask(space.weight_scores()[dim.name], 1 - kept / dim.units,
                                          per_output=space.weight_criterion == "wanda")

    def importance(self, space: PruningSpace) -> dict[str, torch.Tensor]:
        """Single weights, raw, as global magnitude pruning ranks them."""
        scores = space.weight_scores()
        return {d.name: scores[d.name].flatten() for d in space.dimensions if d.granularity == "unstructured"}
