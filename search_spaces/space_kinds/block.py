"""`block`: a residual block that can be replaced by the identity (1 unit, kept or dropped)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import nn

from search_spaces.depth import block_layers, bypassable_blocks, drop_blocks
from search_spaces.layers import Dimension
from search_spaces.space_kinds.base import GranularityInfo, SpaceKindRules

if TYPE_CHECKING:
    from search_spaces.space import PruningSpace


class BlockKind(SpaceKindRules):
    name = "block"
    summary = "residual blocks, whole"
    order = 1  # after the widths: a dropped block takes its (pruned) layers with it
    granularities: ClassVar[dict[str, GranularityInfo]] = {"block": GranularityInfo("block", binary=True)}

    def find(self, space: PruningSpace, model: nn.Module, max_ratio: float) -> list[Dimension]:
        info = {layer.name: layer for layer in space.layers}
        dims = []
        for name in bypassable_blocks(model, space.example):  # a layer excluded from width pruning may still go
            covers = tuple(block_layers(model, name))
            if covers and not set(covers) & set(space.keep_layers) and name not in (*space.keep_layers,
                                                                                       *space.excluded):
                dims.append(Dimension(name, 1, 0, 1, (), (), info[covers[0]], "block", covers=covers))
        return dims

    def restructure(self, space: PruningSpace, model: nn.Module, kept: dict[str, int], by_importance: bool) -> None:
        dropped = [d.name for d in space.dimensions if d.granularity == "block" and kept[d.name] == 0]
        if dropped:
            drop_blocks(model, dropped)
