"""`channel`: one dimension per coupled channel group that Torch-Pruning's dependency graph finds
(a residual stage is one group), removed channel by channel; the fused qkv group of an attention
module is counted in heads (`head`) and removed a whole head at a time."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
import torch_pruning as tp
from torch import nn

from search_spaces.coupling import Coupling, build_graph, grouped_indices, searchable_groups
from search_spaces.criteria import prepare_scorer
from search_spaces.layers import PRUNABLE, Dimension, LayerError, SpaceError, output_layer
from search_spaces.space_kinds.base import GranularityInfo, SpaceKindRules

if TYPE_CHECKING:
    from search_spaces.space import PruningSpace


def names_of(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def groups_of(space: PruningSpace, model: nn.Module) -> tuple[tp.DependencyGraph, list[Coupling]]:
    """The searchable groups of `model`; a group that cannot be searched excludes its root layer (recorded
    in `space.excluded`), and the rest are enumerated again without it until none is refused."""
    model.eval()
    with torch.enable_grad():  # the graph is traced through autograd, even if the caller disabled it
        graph = build_graph(model, space.example)
    modules = dict(model.named_modules())
    ignored = [modules[n] for n in (*space.keep_layers, *space.excluded)]
    head = output_layer(model, space.example)
    if head is not None:
        ignored.append(head)
    names = names_of(model)
    heads = [m for n, m in modules.items() if isinstance(m, nn.Linear) and attention_of(model, n) is not None]
    while True:
        couplings, refused = searchable_groups(graph, ignored, PRUNABLE, names, heads)
        if not refused:
            return graph, couplings
        space.excluded.update(refused)
        ignored += [modules[n] for n in refused]


class ChannelKind(SpaceKindRules):
    name = "channel"
    summary = "channel groups and attention heads"
    order = 0
    granularities: ClassVar[dict[str, GranularityInfo]] = {
        "channel": GranularityInfo("channels", width=True),
        "head": GranularityInfo("heads", width=True),  # an attention module's fused qkv group
    }

    def find(self, space: PruningSpace, model: nn.Module, max_ratio: float) -> list[Dimension]:
        info = {layer.name: layer for layer in space.layers}
        names = names_of(model)
        dims = []
        graph, couplings = groups_of(space, model)
        for coupling in couplings:
            root, group = coupling.root, coupling.group
            members: list[str] = []
            consumers: list[str] = []
            for dep, _ in group:
                name = names.get(dep.target.module)
                if name is None or not isinstance(dep.target.module, PRUNABLE):
                    continue
                (members if graph.is_out_channel_pruning_fn(dep.handler) else consumers).append(name)
            rname = names[root]
            channels = int(graph.get_out_channels(root))
            attn = attention_of(model, rname)
            if attn is not None:
                heads = attn.num_heads
                assert isinstance(heads, int)
                head_dim = channels // (3 * heads)
                dims.append(Dimension(rname.rsplit(".", 1)[0], heads, max(1, math.ceil(heads * (1 - max_ratio))), 1,
                                      tuple(dict.fromkeys(members)), tuple(dict.fromkeys(consumers)), info[rname],
                                      "head", unit_out=3 * head_dim, unit_in=head_dim, root_layer=rname))
                continue
            unit = math.lcm(space.round_to, coupling.channel_groups)  # kept counts: multiples of both
            min_kept = max(1, math.ceil(channels * (1 - max_ratio)))
            min_kept = min(channels, math.ceil(min_kept / unit) * unit)
            dims.append(Dimension(rname, channels, min_kept, unit, tuple(dict.fromkeys(members)),
                                  tuple(dict.fromkeys(consumers)), info[rname],
                                  channel_groups=coupling.channel_groups))
        return dims

    def restructure(self, space: PruningSpace, model: nn.Module, kept: dict[str, int], by_importance: bool) -> None:
        mine = self._by_root(space)
        shrinking = [d for d in mine.values() if kept[d.name] < d.units]
        if not shrinking:
            return
        names, modules = names_of(model), dict(model.named_modules())
        scorer = None
        if by_importance:
            torch.manual_seed(space.seed)  # the random criterion must pick the same channels every time
            scorer = prepare_scorer(space.criterion, model, space.calibration)
        selections = []
        graph, couplings = groups_of(space, model)
        for coupling in couplings:
            root, group = coupling.root, coupling.group
            dim = mine.get(names[root])
            if dim is None or kept[dim.name] >= dim.units:
                continue
            n_prune = dim.units - kept[dim.name]
            if dim.granularity == "head":
                heads = head_scores(modules, dim) if scorer is not None else None
                selections.append((dim, root, group[0].dep.handler, head_channels(dim, heads, n_prune)))
                continue
            try:
                scores = scorer(group) if scorer is not None else None
            except Exception as exc:  # importance code indexes weights by the group's mapping
                raise LayerError(dim.name, "scoring", exc) from exc
            if scorer is not None and scores is None:
                continue
            idxs = grouped_indices(scores, dim.units, dim.channel_groups, n_prune)
            selections.append((dim, root, group[0].dep.handler, idxs))
        # Score every group on the unpruned model first, then prune, as Torch-Pruning's own pruner does.
        for dim, root, handler, idxs in selections:
            try:
                graph.get_pruning_group(root, handler, idxs).prune()
            except Exception as exc:  # e.g. "INDICES element is out of DATA bounds" from index_select
                raise LayerError(dim.root, "pruning", exc) from exc
        for dim in shrinking:
            if dim.granularity == "head":
                modules[dim.name].num_heads = kept[dim.name]
                # Torch-Pruning 1.6 removes the right proj columns but subtracts 3x as many from in_features
                proj = modules[dim.consumers[0]]
                proj.in_features = proj.weight.shape[1]

    def importance(self, space: PruningSpace) -> dict[str, torch.Tensor]:
        """Channels normalised within their group by the space's criterion; heads averaged per head."""
        model = copy.deepcopy(space.base)  # data-driven criteria run passes over it
        torch.manual_seed(space.seed)
        scorer = prepare_scorer(space.criterion, model, space.calibration)
        return self._per_dimension(space, model, scorer, lambda s, dim: s)

    def unit_importance(self, space: PruningSpace, how: str) -> dict[str, torch.Tensor]:
        """Not normalised within the group, so units of different groups compare (a channel of a residual
        stage spans more layers and counts more). `taylor`: first-order loss change |w * dL/dw| summed
        over the group's parameters on the calibration batches (Molchanov 2019); `magnitude`: |w| summed
        the same way. Heads: the head's weight magnitude."""
        model = copy.deepcopy(space.base)  # taylor takes gradients on it
        if how == "taylor":
            if not space.calibration:
                raise SpaceError("taylor importance needs calibration batches")
            imp: tp.importance.Importance = tp.importance.GroupTaylorImportance(group_reduction="sum",
                                                                               normalizer=None)
            model.eval()
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                for x, y in space.calibration:
                    torch.nn.functional.cross_entropy(model(x), y).backward()
        elif how == "magnitude":
            imp = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum", normalizer=None)
        else:
            raise SpaceError(f"unknown unit importance {how!r}; use taylor or magnitude")
        modules = dict(model.named_modules())

        def comparable(s: torch.Tensor, dim: Dimension) -> torch.Tensor:
            if dim.granularity == "head":
                qkv = modules[dim.members[0]]
                assert isinstance(qkv, nn.Linear)
                s = s * qkv.weight.detach().abs().mean()
            return s.clamp_min(0)
        return self._per_dimension(space, model, imp, comparable)

    def _by_root(self, space: PruningSpace) -> dict[str, Dimension]:
        """This kind's dimensions by the layer their Torch-Pruning group starts from."""
        return {d.root: d for d in space.dimensions if d.granularity in self.granularities}

    def _per_dimension(self, space: PruningSpace, model: nn.Module,
                       score_group: Callable[[tp.Group], torch.Tensor | None],
                       finish: Callable[[torch.Tensor, Dimension], torch.Tensor]) -> dict[str, torch.Tensor]:
        """`score_group(group)` of every channel dimension's group and the head scores of every head
        dimension, each passed through `finish(scores, dim)`."""
        mine = self._by_root(space)
        names, modules = names_of(model), dict(model.named_modules())
        scores: dict[str, torch.Tensor] = {}
        for coupling in groups_of(space, model)[1]:
            dim = mine.get(names[coupling.root])
            if dim is None:
                continue
            s = head_scores(modules, dim) if dim.granularity == "head" else score_group(coupling.group)
            if s is not None:
                scores[dim.name] = finish(s.detach().float(), dim)
        return scores


def attention_of(model: nn.Module, qkv_name: str) -> nn.Module | None:
    """The attention module whose fused `qkv` projection is `qkv_name` (timm's layout), if any."""
    parent_name, _, leaf = qkv_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent if leaf == "qkv" and isinstance(getattr(parent, "num_heads", None), int) else None


def head_scores(modules: dict[str, nn.Module], dim: Dimension) -> torch.Tensor:
    """Per-head importance: the mean |weight| of the head's q, k and v rows in qkv and its columns
    in proj, normalised by the mean over heads like Torch-Pruning's group scores. Heads are ranked
    by magnitude whatever the job's criterion: Torch-Pruning's group importance cannot follow the
    qkv reshape to proj without its own pruner's head bookkeeping (it indexes past proj's inputs)."""
    heads, head_dim = dim.units, dim.unit_out // 3
    qkv, proj = modules[dim.members[0]], modules[dim.consumers[0]]
    assert isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)
    rows = qkv.weight.detach().abs().view(3, heads, head_dim, -1).mean(dim=(0, 2, 3))
    cols = proj.weight.detach().abs().view(proj.weight.shape[0], heads, head_dim).mean(dim=(0, 2))
    score = rows + cols
    return score / score.mean().clamp_min(1e-12)


def head_channels(dim: Dimension, per_head: torch.Tensor | None, n_prune: int) -> list[int]:
    """qkv output channels of the `n_prune` least important heads, in all three of q, k and v
    (laid out as (3, heads, head_dim)); without scores, the last heads."""
    heads, head_dim = dim.units, dim.unit_out // 3
    if per_head is None:
        drop = list(range(heads - n_prune, heads))
    else:
        drop = torch.argsort(per_head, stable=True)[:n_prune].tolist()
    return sorted(s * heads * head_dim + h * head_dim + j for s in range(3) for h in drop for j in range(head_dim))

