"""Which Torch-Pruning groups a space can search, and how grouped layers constrain them.

Torch-Pruning's `get_all_groups` stops at the first root it cannot follow (a channel shuffle
raises ZeroDivisionError inside its index mapping) and happily returns groups whose index mapping
is garbage (duplicated or out-of-range channels after a view/transpose shuffle). Here every root
is tried on its own and its group checked, so one bad coupling excludes that group, with the
reason, instead of failing the whole model.

Grouped layers (grouped convolutions, GroupNorm) keep their number of groups, and every group
loses the same channels at the same positions, as Torch-Pruning's own MetaPruner prunes them.
Removing whole groups instead would tie a grouped convolution's input and output channels into one
coupled group, which Torch-Pruning's graph does not model (it only couples depthwise convolutions
that way), and it would change the layer's cardinality, which ResNeXt-style blocks are designed
around. So a group of `G` channel groups keeps a multiple of `G` channels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

OPAQUE = "_prunesearch_opaque_nodes"  # graph attribute: nodes whose index mapping Torch-Pruning could not build


@dataclass(frozen=True)
class Coupling:
    """One searchable Torch-Pruning group: its root module, the group, and its channel groups."""

    root: nn.Module
    group: tp.Group
    channel_groups: int = 1


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of `model`. Its last step maps channel indices through every
    concat/split/reshape; where that raises (ZeroDivisionError at a shufflenet channel shuffle), the
    node is kept as an identity and remembered, and every group through it is refused later."""
    graph = tp.DependencyGraph()
    try:
        graph.build_dependency(model, example_inputs=example)
    except Exception:
        if not getattr(graph, "module2node", None) or not _tolerant_index_mapping(graph):
            raise
    _bound_index_mappings(graph, _widest(model))
    return graph


class MappingOverflow(RuntimeError):
    """Torch-Pruning's index mapping produced more channel indices than any layer has."""


class _Bounded:
    """An index mapping that refuses to grow past `limit` indices. Through a reshape whose channel
    axis Torch-Pruning infers wrongly (Swin's channels-last windows), its flatten mapping multiplies
    the indices on every turn of a residual cycle, and the group search grows until memory runs out."""

    def __init__(self, mapping: Any, limit: int) -> None:
        self.mapping, self.limit = mapping, limit

    def __call__(self, idxs: Any) -> Any:
        out = self.mapping(idxs)
        if len(out) > self.limit:
            raise MappingOverflow(f"it maps {len(idxs)} channels onto {len(out)}, more than any layer has "
                                  f"({self.limit})")
        return out


class _BoundedMappings(list[Any]):
    """A dependency's index mappings; Torch-Pruning assigns them by item, each time it re-infers them."""

    def __init__(self, mappings: Iterable[Any], limit: int) -> None:
        self.limit = limit
        super().__init__(_Bounded(m, limit) if m is not None else None for m in mappings)

    def __setitem__(self, i: Any, mapping: Any) -> None:
        super().__setitem__(i, _Bounded(mapping, self.limit) if mapping is not None else None)


def _widest(model: nn.Module) -> int:
    """The largest dimension of any parameter: no channel index can exceed it (a flatten into a linear
    layer included, whose input dimension is channels x positions)."""
    return max((max(p.shape) for p in model.parameters() if p.dim()), default=1)


def _bound_index_mappings(graph: tp.DependencyGraph, limit: int) -> None:
    for node in graph.module2node.values():
        for dep in node.dependencies:
            dep.index_mapping = _BoundedMappings(dep.index_mapping, limit)


def _tolerant_index_mapping(graph: tp.DependencyGraph) -> bool:
    """Torch-Pruning's `update_index_mapping`, node by node; True if some node failed (now opaque)."""
    from torch_pruning.dependency import index_mapping as im

    t = tp.ops.OPTYPE
    updates = {t.CONCAT: im.update_concat_index_mapping, t.SPLIT: im.update_split_index_mapping,
               t.RESHAPE: im.update_reshape_index_mapping, t.UNBIND: im.update_unbind_index_mapping,
               t.EXPAND: im.update_expand_index_mapping, t.SLICE: im.update_slice_index_mapping}
    opaque = []
    for node in graph.module2node.values():
        update = updates.get(node.type)
        if update is None:
            continue
        try:
            update(graph, node)
        except Exception:  # what Torch-Pruning raises here is an accident of its shape inference
            node.type = t.ELEMENTWISE  # get_pruning_group re-runs the mapping: never again for this node
            opaque.append(node)
    setattr(graph, OPAQUE, opaque)
    return bool(opaque)


def _is_depthwise(m: nn.Module) -> bool:
    """Torch-Pruning prunes these as whole groups (input, output and `groups` shrink together)."""
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels and m.out_channels > 1


def _grouped_layers(graph: tp.DependencyGraph, group: tp.Group) -> Iterator[tuple[Any, Any, nn.Module, int]]:
    """(dependency, indices, module, its channel groups on the pruned side) of every layer of `group` that
    Torch-Pruning prunes and that is not depthwise (a depthwise conv follows any count)."""
    for dep, idxs in group:
        module = dep.target.module
        if not isinstance(module, nn.Module) or _is_depthwise(module):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        out = graph.is_out_channel_pruning_fn(dep.handler)
        n = pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module)
        yield dep, idxs, module, int(n)


def channel_groups(graph: tp.DependencyGraph, group: tp.Group) -> tuple[int, list[tuple[str, int]]]:
    """The least common multiple of the channel groups of every layer in `group` (1 if none), and
    those layers' (type, groups). Depthwise convolutions follow any count and do not constrain it."""
    lcm, found = 1, []
    for _, _, module, n in _grouped_layers(graph, group):
        if n > 1:
            lcm = math.lcm(lcm, n)
            found.append((type(module).__name__, n))
    return lcm, found


def grouped_indices(scores: torch.Tensor | None, channels: int, groups: int, n_prune: int) -> list[int]:
    """The channels to remove: the same `n_prune / groups` positions in each of `groups` equal slices,
    ranked by the importance averaged over the slices (the last positions without scores)."""
    if channels % groups or n_prune % groups:
        raise ValueError(f"cannot remove {n_prune} of {channels} channels evenly from {groups} groups")
    size, per = channels // groups, n_prune // groups
    if scores is None:
        positions = list(range(size - per, size))
    else:
        positions = torch.argsort(scores.reshape(groups, size).mean(dim=0), stable=True)[:per].tolist()
    return sorted(p + g * size for g in range(groups) for p in positions)


def _channels_of(graph: tp.DependencyGraph, dep: tp.Dependency) -> int | None:
    module = dep.target.module
    if not isinstance(module, nn.Module) or not any(True for _ in module.parameters(recurse=False)):
        return None
    out = graph.is_out_channel_pruning_fn(dep.handler)
    n = graph.get_out_channels(module) if out else graph.get_in_channels(module)
    return int(n) if n is not None else None


def mapping_problem(graph: tp.DependencyGraph, group: tp.Group, names: dict[nn.Module, str]) -> str | None:
    """Why a group's channel indices cannot be trusted, or None: a layer that gets a channel twice or
    one it does not have (Torch-Pruning's index mapping through a reshape-based channel shuffle)."""
    for dep, idxs in group:
        n = _channels_of(graph, dep)
        if n is None:
            continue
        plain = [int(i) for i in tp._helpers.to_plain_idxs(idxs)]
        if len(set(plain)) != len(plain) or (plain and not 0 <= min(plain) <= max(plain) < n):
            where = names.get(dep.target.module, str(dep.target.module))
            return (f"Torch-Pruning maps its channels inconsistently onto {where!r} (a reshape or channel "
                    "shuffle it cannot follow)")
    return None


def probe_problem(graph: tp.DependencyGraph, root: nn.Module, handler: object, channels: int,
                  names: dict[nn.Module, str]) -> str | None:
    """Why removing a few of the root's channels would not remove the same number from every layer
    whose output channels go with them (BN, residual partners), or None. Torch-Pruning's mapping
    through a shuffle's view/transpose sends one channel around the cycle many times."""
    probe = sorted({0, channels // 2, channels - 1})
    group = graph.get_pruning_group(root, handler, probe)
    for dep, idxs in group:
        if not graph.is_out_channel_pruning_fn(dep.handler) or _channels_of(graph, dep) is None:
            continue
        plain = {int(i) for i in tp._helpers.to_plain_idxs(idxs)}
        if len(plain) != len(probe):
            where = names.get(dep.target.module, str(dep.target.module))
            return (f"removing {len(probe)} of its channels would remove {len(plain)} from {where!r}: Torch-Pruning "
                    "cannot follow the reshape or channel shuffle between them")
    return None


def uniform_problem(graph: tp.DependencyGraph, group: tp.Group, names: dict[nn.Module, str]) -> str | None:
    """Why pruning the same positions in each slice of the root does not prune each grouped layer of
    `group` evenly, or None (a concat or split between the root and a grouped layer shifts them)."""
    for dep, idxs, module, n in _grouped_layers(graph, group):
        total = _channels_of(graph, dep)
        if n <= 1 or total is None:
            continue
        size = total // n
        plain = [int(i) for i in tp._helpers.to_plain_idxs(idxs)]
        per_group = [sorted(i % size for i in plain if i // size == g) for g in range(n)]
        if any(p != per_group[0] for p in per_group):
            return (f"its channels reach {names.get(module, type(module).__name__)!r} ({n} groups) through a "
                    "concat or split, so its groups would lose different channels")
    return None


def searchable_groups(graph: tp.DependencyGraph, ignored: Sequence[nn.Module], root_types: Iterable[type],
                      names: dict[nn.Module, str], heads: Iterable[nn.Module] = ()
                      ) -> tuple[list[Coupling], dict[str, str]]:
    """Torch-Pruning's `get_all_groups`, one root at a time: the groups that can be searched, and
    {root layer: why not} for those that cannot. `heads`: fused qkv roots, pruned a whole head at a
    time by the space itself, whose q/k/v-onto-proj mapping repeats channels by design."""
    trusted = set(heads)
    opaque = set(getattr(graph, OPAQUE, ()))
    ignored_set = set(ignored) | set(graph.IGNORED_LAYERS_IN_TRACING)
    types = tuple(root_types)
    visited: set[nn.Module] = set()
    found: list[Coupling] = []
    refused: dict[str, str] = {}
    for m in list(graph.module2node):
        if not isinstance(m, nn.Module) or m in ignored_set or m in visited or not isinstance(m, types):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        name = names.get(m, type(m).__name__)
        channels = int(pruner.get_out_channels(m))
        try:
            group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(channels)))
        except MappingOverflow as exc:
            refused[name] = f"Torch-Pruning cannot follow its channels through a reshape or channel shuffle: {exc}"
            continue
        except Exception as exc:  # Torch-Pruning's index mapping raises anything (ZeroDivisionError at a shuffle)
            refused[name] = f"Torch-Pruning cannot follow its channels ({type(exc).__name__}: {exc})"
            continue
        if any(dep.source in opaque or dep.target in opaque for dep, _ in group):
            refused[name] = ("its channels pass through a reshape Torch-Pruning cannot map (its index mapping "
                             "fails there, as at a channel shuffle)")
            continue
        reason = None if m in trusted else (mapping_problem(graph, group, names)
                                            or probe_problem(graph, m, pruner.prune_out_channels, channels, names))
        if reason is not None:
            refused[name] = reason
            continue
        outs = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
        visited.update(outs)
        if any(o in ignored_set for o in outs):
            continue
        lcm, layers = channel_groups(graph, group)
        if lcm > 1:
            kinds = ", ".join(f"{t} with {n} groups" for t, n in layers)
            if channels % lcm:
                refused[name] = (f"its {channels} channels do not split evenly into the groups of the layers "
                                 f"they reach ({kinds}) through a concat or split")
                continue
            if channels // lcm < 2:
                refused[name] = (f"its {channels} channels feed grouped layers ({kinds}) whose groups have one "
                                 "channel each: only whole groups could go, which would change those layers' groups")
                continue
            size = channels // lcm
            probe = graph.get_pruning_group(m, pruner.prune_out_channels, [size - 1 + g * size for g in range(lcm)])
            reason = uniform_problem(graph, probe, names)
            if reason is not None:
                refused[name] = reason
                continue
        found.append(Coupling(m, group, lcm))
    return found, refused
