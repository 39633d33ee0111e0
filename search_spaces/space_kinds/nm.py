"""`nm`: one layer, dense or N:M sparse (N of every M weights along the input dimension kept)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from search_spaces import sparsity
from search_spaces.layers import Dimension
from search_spaces.space_kinds.base import GranularityInfo, SpaceKindRules

if TYPE_CHECKING:
    from search_spaces.plan import GroupResult
    from search_spaces.space import PruningSpace


class NMKind(SpaceKindRules):
    name = "nm"
    summary = "N:M per layer; params budget"
    order = 3
    granularities: ClassVar[dict[str, GranularityInfo]] = {"nm": GranularityInfo("of M", binary=True, sparse=True)}

    def find(self, space: PruningSpace, model: nn.Module, max_ratio: float) -> list[Dimension]:
        """Layers whose input dimension divides into groups of M (the classifier and `keep_layers` stay)."""
        modules = dict(model.named_modules())
        n, m = space.nm
        return [Dimension(layer.name, m, n, m - n, (layer.name,), (), layer, "nm")
                for layer in sparsity.maskable_layers(space, model) if sparsity.nm_eligible(modules[layer.name], m)]

    def mask(self, space: PruningSpace, dim: Dimension, kept: int) -> torch.Tensor:
        return sparsity.nm_mask(space.weight_scores()[dim.name], *space.nm)

    def report(self, space: PruningSpace) -> dict[str, Any]:
        n, m = space.nm
        return {"nm": f"{n}:{m}", "accelerated": False,
                "note": "N:M masks are applied to dense weights: size and accuracy only. A speed-up needs "
                        "semi-structured sparse kernels on a GPU that has them (NVIDIA Ampere and later), which "
                        "prunesearch does not drive yet."}

    def settings_from_plan(self, groups: Sequence[GroupResult]) -> dict[str, Any]:
        """N and M: M is every group's unit count, N what a switched-on group keeps."""
        m = groups[0].units
        return {"nm": (min((g.kept for g in groups if g.kept < m), default=m // 2), m)}
