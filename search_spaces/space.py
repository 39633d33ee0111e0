"""The pruning space of a model: its dimensions, and the operations on plans over them.

Built on Torch-Pruning's three layers: its DependencyGraph finds which channels must go
together, its Group is one dimension of our space, and its pruning functions do the channel
surgery. We only decide *how many* channels each group keeps (the plan) and *which* ones (the
criterion).

Every dimension is "how many of N units stay"; the granularity names the unit, so agents need no
case per kind and a plan is one mapping of dimension -> ratio:

* channel: a coupled channel group (Torch-Pruning group); `head`: the attention heads of one
  attention module (its qkv group, removed a whole head at a time).
* block: a residual block that can be replaced by the identity (1 unit, kept or dropped).
* unstructured: the weights of one layer, zeroed by a fine-grained criterion (a size budget:
  dense kernels still run the zeros).
* nm: one layer, dense or N:M sparse (N of every M weights along the input dimension).

`block` and `nm` are binary: a ratio at or above half the dimension's maximum switches it on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from search_spaces import sparsity
from search_spaces.coupling import Coupling, build_graph, grouped_indices, searchable_groups
from search_spaces.criteria import Batches, prepare_scorer
from search_spaces.depth import block_layers, bypassable_blocks, drop_blocks
from search_spaces.kinds import BINARY, NEEDS_DATA, SPARSE, SPARSE_CRITERIA, WIDTH, Granularity, KindError, check_kinds
from search_spaces.plan import GroupResult, LayerResult, ModelIdentity, Plan, PlanMismatchError
from search_spaces.weights import fingerprint

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
    granularity: Granularity = "channel"
    covers: tuple[str, ...] = ()  # block: every conv/linear layer that goes with it
    unit_out: int = 1  # output channels of each member per unit (heads: 3 * head_dim of qkv)
    unit_in: int = 1  # input channels of each consumer per unit (heads: head_dim of proj)
    channel_groups: int = 1  # grouped layers in the group: each of this many slices loses the same channels

    @property
    def binary(self) -> bool:
        return self.granularity in BINARY

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


class PruningSpace:
    """The searchable dimensions of one base model, and the operations on plans over them."""

    def __init__(self, model: nn.Module, identity: ModelIdentity, *, criterion: str = "l1", round_to: int = 1,
                 max_ratio: float = 0.9, keep_layers: Iterable[str] = (),
                 calibration: Batches | None = None, seed: int = 0,
                 kinds: Sequence[str] = ("channel",), nm: tuple[int, int] = (2, 4),
                 exclude: Mapping[str, str] | None = None) -> None:
        self.base = model.eval()
        self.identity = identity
        self.criterion = criterion
        self.round_to = round_to
        self.seed = seed
        self.kinds = tuple(kinds)
        self.nm = nm
        try:
            check_kinds(self.kinds, criterion, nm)
        except KindError as exc:
            raise SpaceError(str(exc)) from None
        self._calibration = list(calibration) if calibration is not None else None
        if criterion in NEEDS_DATA and not self._calibration:
            raise SpaceError(f"criterion: {criterion!r} needs calibration batches")
        self.example = torch.zeros(1, identity.in_channels, identity.input_size, identity.input_size)
        modules = dict(model.named_modules())
        unknown = [n for n in keep_layers if n not in modules]
        if unknown:
            raise SpaceError(f"keep_layers: no such module(s) {unknown}; e.g. {list(modules)[1:6]}")
        self.keep_layers = tuple(keep_layers)
        unknown = [n for n in exclude or {} if n not in modules]
        if unknown:
            raise SpaceError(f"keep_layers: cannot exclude unknown module(s) {unknown}")
        # Layers whose output channels are never pruned because they cannot be, with the reason: given
        # (a plan's, the preflight's) or found while building the space (groups Torch-Pruning cannot follow).
        self.excluded: dict[str, str] = dict(exclude or {})
        self.fingerprint = fingerprint(identity.arch, model)
        self.layers = describe_layers(model, self.example)
        self.flops, self.params = count_cost(model, self.example)
        if self.sparse:  # the size budget counts what a sparse file stores: non-zero parameters
            self.params = sparsity.nonzero_parameters(model)
        dims: list[Dimension] = []
        if "channel" in self.kinds:
            dims += self._channel_dimensions(model, max_ratio)
        if "block" in self.kinds:
            dims += self._block_dimensions(model)
        if self.sparse:
            dims += self._sparse_dimensions(model, max_ratio)
        if not dims:
            raise SpaceError(f"model: no prunable dimension of kind {'/'.join(self.kinds)} found")
        self.dimensions = sorted(dims, key=lambda d: (d.layer.index, d.granularity != "block"))  # forward order
        self._by_name = {d.name: d for d in dims}
        widths = [d for d in dims if d.granularity in WIDTH]
        self._by_root = {(d.members[0] if d.granularity == "head" else d.name): d for d in widths}
        self._out_of = {m: d for d in widths for m in d.members}  # layer -> dimension shrinking its outputs
        self._in_of = {c: d for d in widths for c in d.consumers}  # ... and its inputs
        self._scores: dict[str, torch.Tensor] | None = None
        self._zeroed_cache: dict[tuple[str, int], int] = {}
        self._weight_scores: dict[str, torch.Tensor] | None = None

    @property
    def weight_criterion(self) -> str:
        """The criterion ranking single weights in a fine-grained space (l1 is magnitude)."""
        return SPARSE_CRITERIA[self.criterion]

    @property
    def has_calibration(self) -> bool:
        """Training batches were given, for data-driven criteria and importances."""
        return bool(self._calibration)

    @property
    def sparse(self) -> bool:
        """Fine-grained dimensions: the model keeps its shapes and stores zeros."""
        return any(k in SPARSE for k in self.kinds)

    # -- dimensions of each kind -----------------------------------------------------------------
    def _channel_dimensions(self, model: nn.Module, max_ratio: float) -> list[Dimension]:
        """One per Torch-Pruning group; the qkv group of an attention module is counted in heads."""
        info = {layer.name: layer for layer in self.layers}
        names = self._names(model)
        dims = []
        graph, couplings = self._groups(model)
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
            attn = _attention_of(model, rname)
            if attn is not None:
                heads = attn.num_heads
                assert isinstance(heads, int)
                head_dim = channels // (3 * heads)
                dims.append(Dimension(rname.rsplit(".", 1)[0], heads, max(1, math.ceil(heads * (1 - max_ratio))), 1,
                                      tuple(dict.fromkeys(members)), tuple(dict.fromkeys(consumers)), info[rname],
                                      "head", unit_out=3 * head_dim, unit_in=head_dim))
                continue
            unit = math.lcm(self.round_to, coupling.channel_groups)  # kept counts: multiples of both
            min_kept = max(1, math.ceil(channels * (1 - max_ratio)))
            min_kept = min(channels, math.ceil(min_kept / unit) * unit)
            dims.append(Dimension(rname, channels, min_kept, unit, tuple(dict.fromkeys(members)),
                                  tuple(dict.fromkeys(consumers)), info[rname],
                                  channel_groups=coupling.channel_groups))
        return dims

    def _block_dimensions(self, model: nn.Module) -> list[Dimension]:
        info = {layer.name: layer for layer in self.layers}
        dims = []
        for name in bypassable_blocks(model, self.example):
            covers = tuple(block_layers(model, name))
            if covers and not set(covers) & set(self.keep_layers) and name not in (*self.keep_layers, *self.excluded):
                dims.append(Dimension(name, 1, 0, 1, (), (), info[covers[0]], "block", covers=covers))
        return dims

    def _sparse_dimensions(self, model: nn.Module, max_ratio: float) -> list[Dimension]:
        """One per conv/linear layer but the classifier (and `keep_layers`); nm: layers whose input
        dimension divides into groups of M."""
        modules = dict(model.named_modules())
        head = output_layer(model, self.example)
        skip = set(self.keep_layers) | set(self.excluded) | {n for n, m in modules.items() if m is head}
        n, m = self.nm
        dims = []
        for layer in self.layers:
            module = modules[layer.name]
            if layer.name in skip:
                continue
            if "nm" in self.kinds:
                if sparsity.nm_eligible(module, m):
                    dims.append(Dimension(layer.name, m, n, m - n, (layer.name,), (), layer, "nm"))
                continue
            weights = module.weight.numel()
            # Wanda compares weights within each output row: keep whole rows' worth so every row loses
            # the same count and the plan's count is exact.
            unit = module.weight.shape[0] if self.weight_criterion == "wanda" else 1
            min_kept = math.ceil(max(1, math.ceil(weights * (1 - max_ratio))) / unit) * unit
            dims.append(Dimension(layer.name, weights, min_kept, unit, (layer.name,), (), layer, "unstructured"))
        return dims

    # -- graph helpers -------------------------------------------------------------------------
    @staticmethod
    def _names(model: nn.Module) -> dict[nn.Module, str]:
        return {m: n for n, m in model.named_modules()}

    def _graph(self, model: nn.Module) -> tuple[tp.DependencyGraph, list[nn.Module]]:
        model.eval()
        with torch.enable_grad():  # the graph is traced through autograd, even if the caller disabled it
            graph = build_graph(model, self.example)
        modules = dict(model.named_modules())
        ignored = [modules[n] for n in (*self.keep_layers, *self.excluded)]
        head = output_layer(model, self.example)
        if head is not None:
            ignored.append(head)
        return graph, ignored

    def _groups(self, model: nn.Module) -> tuple[tp.DependencyGraph, list[Coupling]]:
        """The searchable groups; a group that cannot be searched excludes its root layer (recorded in
        `excluded`), and the rest are enumerated again without it until none is refused."""
        graph, ignored = self._graph(model)
        names = self._names(model)
        modules = dict(model.named_modules())
        heads = [m for n, m in modules.items() if isinstance(m, nn.Linear) and _attention_of(model, n) is not None]
        while True:
            couplings, refused = searchable_groups(graph, ignored, PRUNABLE, names, heads)
            if not refused:
                return graph, couplings
            self.excluded.update(refused)
            ignored += [modules[n] for n in refused]

    # -- plans ---------------------------------------------------------------------------------
    def dimension(self, name: str) -> Dimension:
        try:
            return self._by_name[name]
        except KeyError:
            raise SpaceError(f"unknown group {name!r}; groups: {list(self._by_name)}") from None

    def kept_for(self, ratios: Mapping[str, float]) -> dict[str, int]:
        for name in ratios:
            self.dimension(name)
        return {d.name: d.kept(float(ratios.get(d.name, 0.0))) for d in self.dimensions}

    def uniform(self, ratio: float) -> dict[str, float]:
        """Every width/sparsity dimension at `ratio`; blocks stay (uniform is a width baseline)."""
        return {d.name: 0.0 if d.granularity == "block" else d.snap(ratio) for d in self.dimensions}

    def smallest(self) -> dict[str, float]:
        """The most-pruned plan the space allows."""
        return {d.name: d.max_ratio for d in self.dimensions}

    def apply(self, ratios: Mapping[str, float]) -> nn.Module:
        """A physically smaller copy of the base model; channels chosen by the space's criterion.
        Fine-grained plans come back masked (torch.nn.utils.prune), so a fine-tune keeps the zeros;
        `sparsity.make_permanent` folds the masks in before saving."""
        kept = self.kept_for(ratios)
        model = self._prune(copy.deepcopy(self.base), kept, by_importance=True)
        if self.sparse:
            sparsity.apply_masks(model, self._masks(kept))
        return model

    def rebuild(self, model: nn.Module, plan: Plan) -> nn.Module:
        """Give a freshly built base architecture the plan's structure, ready to load pruned weights.

        Which channels go does not matter here (the pruned weights overwrite them), so no weights,
        criterion or data are needed: the plan's kept counts fully determine every shape.
        """
        self._check_identity(plan, check_weights=False)
        return self._prune(model, plan.kept, by_importance=False)

    def _prune(self, model: nn.Module, kept: Mapping[str, int], by_importance: bool) -> nn.Module:
        names = self._names(model)
        modules = dict(model.named_modules())
        shrinking = [d for d in self._by_root.values() if kept[d.name] < d.units]
        if shrinking:
            scorer = None
            if by_importance:
                torch.manual_seed(self.seed)  # the random criterion must pick the same channels every time
                scorer = prepare_scorer(self.criterion, model, self._calibration)
            selections = []
            graph, couplings = self._groups(model)
            for coupling in couplings:
                root, group = coupling.root, coupling.group
                dim = self._by_root.get(names[root])
                if dim is None or kept[dim.name] >= dim.units:
                    continue
                n_prune = dim.units - kept[dim.name]
                if dim.granularity == "head":
                    heads = _head_scores(modules, dim) if scorer is not None else None
                    selections.append((dim, root, group[0].dep.handler, _head_channels(dim, heads, n_prune)))
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
                    raise LayerError(dim.members[0] if dim.granularity == "head" else dim.name, "pruning",
                                     exc) from exc
            for dim in shrinking:
                if dim.granularity == "head":
                    modules[dim.name].num_heads = kept[dim.name]
                    # Torch-Pruning 1.6 removes the right proj columns but subtracts 3x as many from in_features
                    proj = modules[dim.consumers[0]]
                    proj.in_features = proj.weight.shape[1]
        dropped = [d.name for d in self.dimensions if d.granularity == "block" and kept[d.name] == 0]
        if dropped:
            drop_blocks(model, dropped)
        model.zero_grad(set_to_none=True)
        return model.eval()

    def _masks(self, kept: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Keep-masks of the fine-grained dimensions that remove something."""
        return {d.name: self._mask(d.name, kept[d.name]) for d in self.dimensions if kept[d.name] < d.units}

    def _mask(self, name: str, kept: int) -> torch.Tensor:
        d, scores = self._by_name[name], self.weight_scores()[name]
        if d.granularity == "nm":
            return sparsity.nm_mask(scores, *self.nm)
        return sparsity.unstructured_mask(scores, 1 - kept / d.units,
                                          per_output=self.weight_criterion == "wanda")

    def _zeroed(self, name: str, kept: int) -> int:
        """Non-zero base weights a dimension's mask removes (cached: searches ask for the same counts
        again): the exact size cost of a plan, also when the base already holds zeros (a checkpoint
        pruned before), which a mask takes first."""
        if (name, kept) not in self._zeroed_cache:
            weight = dict(self.base.named_modules())[name].weight.detach()
            self._zeroed_cache[name, kept] = int(((weight != 0) & ~self._mask(name, kept)).sum())
        return self._zeroed_cache[name, kept]

    def weight_scores(self) -> dict[str, torch.Tensor]:
        """Per-weight importance of every fine-grained dimension's layer on the base model, cached."""
        if self._weight_scores is None:
            model = copy.deepcopy(self.base)
            self._weight_scores = sparsity.weight_scores(model, [d.name for d in self.dimensions],
                                                         self.weight_criterion, self._calibration)
        return self._weight_scores

    def importance_scores(self) -> dict[str, torch.Tensor]:
        """Per-dimension unit importance on the base model, cached, for one global ranking: channels
        normalised within their group (heads: averaged per head); fine-grained weights raw, as
        global magnitude pruning ranks them. Binary dimensions are not ranked."""
        if self._scores is None:
            if self.sparse:
                ws = self.weight_scores()
                self._scores = {d.name: ws[d.name].flatten() for d in self.dimensions
                                if d.granularity == "unstructured"}
                return self._scores
            model = copy.deepcopy(self.base)
            torch.manual_seed(self.seed)
            scorer = prepare_scorer(self.criterion, model, self._calibration)
            names = self._names(model)
            scores = {}
            modules = dict(model.named_modules())
            for coupling in self._groups(model)[1]:
                root, group = coupling.root, coupling.group
                dim = self._by_root.get(names[root])
                if dim is None:
                    continue
                s = _head_scores(modules, dim) if dim.granularity == "head" else scorer(group)
                if s is not None:
                    scores[dim.name] = s.detach().float()
            self._scores = scores
        return self._scores

    def unit_importance(self, kind: str = "taylor") -> dict[str, torch.Tensor]:
        """Per-unit importance of every channel and head dimension on the base model, *not* normalised
        within the group, so units of different groups compare (a channel of a residual stage spans more
        layers and counts more): what an allocation across groups needs (HALP). `taylor`: first-order
        loss change |w * dL/dw| summed over the group's parameters on the calibration batches (Molchanov
        2019; needs them); `magnitude`: |w| summed the same way. Heads: the head's weight magnitude."""
        model = copy.deepcopy(self.base)
        if kind == "taylor":
            if not self._calibration:
                raise SpaceError("taylor importance needs calibration batches")
            imp: tp.importance.Importance = tp.importance.GroupTaylorImportance(group_reduction="sum",
                                                                               normalizer=None)
            model.eval()
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                for x, y in self._calibration:
                    torch.nn.functional.cross_entropy(model(x), y).backward()
        elif kind == "magnitude":
            imp = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum", normalizer=None)
        else:
            raise SpaceError(f"unknown unit importance {kind!r}; use taylor or magnitude")
        names, modules = self._names(model), dict(model.named_modules())
        scores: dict[str, torch.Tensor] = {}
        for coupling in self._groups(model)[1]:
            root, group = coupling.root, coupling.group
            dim = self._by_root.get(names[root])
            if dim is None:
                continue
            if dim.granularity == "head":
                qkv = modules[dim.members[0]]
                assert isinstance(qkv, nn.Linear)
                s = _head_scores(modules, dim) * qkv.weight.detach().abs().mean()
            else:
                s = imp(group)
            if s is not None:
                scores[dim.name] = s.detach().float().clamp_min(0)
        return scores

    def count(self, model: nn.Module) -> tuple[int, int]:
        """(MACs, params) of a model from this space; params are the non-zero ones in a sparse space,
        whose MACs are the base's (dense kernels run the zeros)."""
        if self.sparse:
            return self.flops, sparsity.nonzero_parameters(model)
        return count_cost(model, self.example)

    def layer_shapes(self, kept: Mapping[str, int]) -> dict[str, tuple[int, int, float] | None]:
        """(in channels, out channels, weight density) of every conv/linear layer under a plan, None
        for a layer that goes with a dropped block: the channel model that lookup tables and cost
        estimates share."""
        density = {d.name: kept[d.name] / d.units for d in self.dimensions if d.granularity in SPARSE}
        gone = {layer for d in self.dimensions if d.granularity == "block" and kept[d.name] == 0 for layer in d.covers}
        shapes: dict[str, tuple[int, int, float] | None] = {}
        for info in self.layers:
            if info.name in gone:
                shapes[info.name] = None
                continue
            od, idim = self._out_of.get(info.name), self._in_of.get(info.name)
            cout = kept[od.name] * od.unit_out if od else info.out_channels
            cin = cout if info.kind == "dwconv" else (kept[idim.name] * idim.unit_in if idim else info.in_channels)
            shapes[info.name] = (cin, cout, density.get(info.name, 1.0))
        return shapes

    def plan(self, ratios: Mapping[str, float], pruned: nn.Module | None = None) -> Plan:
        """Describe `ratios` fully: per dimension, per layer, and the cost before and after."""
        kept = self.kept_for(ratios)
        pruned = pruned if pruned is not None else self.apply(ratios)
        flops, params = self.count(pruned)
        after = {layer.name: layer for layer in describe_layers(pruned, self.example)}
        modules = dict(pruned.named_modules())

        def params_after(name: str) -> int:
            if name not in after:
                return 0  # removed with its block
            if not self.sparse:
                return after[name].params
            return sum(int(torch.count_nonzero(t)) for t in (modules[name].weight, getattr(modules[name], "bias", None))
                       if t is not None)

        return Plan(
            fingerprint=self.fingerprint, model=self.identity, criterion=self.criterion, round_to=self.round_to,
            keep_layers=list(self.keep_layers), excluded=dict(self.excluded),
            groups=[GroupResult(name=d.name, granularity=d.granularity, members=list(d.members or d.covers),
                                ratio=d.snap(float(ratios.get(d.name, 0.0))), units=d.units, kept=kept[d.name])
                    for d in self.dimensions],
            layers=[LayerResult(name=b.name, kind=b.kind, in_before=b.in_channels,
                                in_after=after[b.name].in_channels if b.name in after else 0,
                                out_before=b.out_channels,
                                out_after=after[b.name].out_channels if b.name in after else 0,
                                params_before=b.params, params_after=params_after(b.name)) for b in self.layers],
            flops_before=self.flops, flops_after=flops, params_before=self.params, params_after=params,
        )

    def cost(self, ratios: Mapping[str, float]) -> tuple[int, int]:
        """(MACs, params) of the model `ratios` would give; params count non-zeros in a sparse space."""
        kept = self.kept_for(ratios)
        if self.sparse:  # shapes stay; each dimension's mask zeroes some of its layer's weights
            zeroed = sum(self._zeroed(d.name, kept[d.name]) for d in self.dimensions if kept[d.name] < d.units)
            return self.flops, self.params - zeroed
        return count_cost(self.structure(ratios), self.example)

    def structure(self, ratios: Mapping[str, float]) -> nn.Module:
        """A copy of the base with the shapes `ratios` give, channels picked without scoring: what the
        cost model counts and the preflight runs (fine-grained plans keep the base's shapes)."""
        return self._prune(copy.deepcopy(self.base), self.kept_for(ratios), by_importance=False)

    def _check_identity(self, plan: Plan, check_weights: bool = True) -> None:
        if plan.model != self.identity:
            raise PlanMismatchError(
                f"plan is for {plan.model.model_dump()}, this model is {self.identity.model_dump()}")
        if check_weights and plan.fingerprint != self.fingerprint:
            raise PlanMismatchError(
                f"plan was made for base model {plan.fingerprint}, this model is {self.fingerprint}")
        missing = sorted(set(plan.kept) ^ set(self._by_name))
        if missing:
            raise PlanMismatchError(f"plan groups do not match this model's groups: {missing[:5]}")

    def apply_plan(self, plan: Plan) -> nn.Module:
        """Apply a stored plan to this base model; refuses a plan made for other weights."""
        self._check_identity(plan)
        return self.apply(plan.ratios)


def _attention_of(model: nn.Module, qkv_name: str) -> nn.Module | None:
    """The attention module whose fused `qkv` projection is `qkv_name` (timm's layout), if any."""
    parent_name, _, leaf = qkv_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent if leaf == "qkv" and isinstance(getattr(parent, "num_heads", None), int) else None


def _head_scores(modules: Mapping[str, nn.Module], dim: Dimension) -> torch.Tensor:
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


def _head_channels(dim: Dimension, per_head: torch.Tensor | None, n_prune: int) -> list[int]:
    """qkv output channels of the `n_prune` least important heads, in all three of q, k and v
    (laid out as (3, heads, head_dim)); without scores, the last heads."""
    heads, head_dim = dim.units, dim.unit_out // 3
    if per_head is None:
        drop = list(range(heads - n_prune, heads))
    else:
        drop = torch.argsort(per_head, stable=True)[:n_prune].tolist()
    return sorted(s * heads * head_dim + h * head_dim + j for s in range(3) for h in drop for j in range(head_dim))
