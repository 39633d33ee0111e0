"""The pruning space of a model: one dimension per coupled channel group.

Built on Torch-Pruning's three layers: its DependencyGraph finds which channels must go
together, its Group is one dimension of our space, and its pruning functions do the channel
surgery. We only decide *how many* channels each group keeps (the plan) and *which* ones (the
criterion).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from search_spaces.criteria import DATA_DRIVEN, Batches, prepare_scorer
from search_spaces.plan import GroupResult, LayerResult, ModelIdentity, Plan, PlanMismatchError
from search_spaces.weights import fingerprint

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


class SpaceError(ValueError):
    """A bad request against the space: unknown group, ratio out of range, unknown layer."""


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
    """One coupled channel group: the search decides how many of its channels stay."""

    name: str
    channels: int
    min_kept: int
    round_to: int
    members: tuple[str, ...]  # layers whose output channels this group removes
    consumers: tuple[str, ...]  # layers whose input channels this group removes
    layer: LayerInfo  # the root layer, for agents that want a descriptor

    @property
    def max_ratio(self) -> float:
        return 1 - self.min_kept / self.channels

    def kept(self, ratio: float) -> int:
        if not 0 <= ratio < 1:
            raise SpaceError(f"ratio for group {self.name!r} must be in [0, 1), got {ratio}")
        want = self.channels * (1 - ratio)
        rounded = math.floor(want / self.round_to + 0.5) * self.round_to
        return max(self.min_kept, min(self.channels, rounded))


def _layer_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    assert isinstance(m, nn.modules.conv._ConvNd)
    return "dwconv" if m.groups > 1 and m.groups == m.in_channels else "conv"


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
            info = LayerInfo(len(seen), names[m], "linear", cin, cout, 1, 1, params, spatial * cin * cout, bias=bias)
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
                 calibration: Batches | None = None, seed: int = 0) -> None:
        self.base = model.eval()
        self.identity = identity
        self.criterion = criterion
        self.round_to = round_to
        self.seed = seed
        self._calibration = list(calibration) if calibration is not None else None
        if criterion in DATA_DRIVEN and not self._calibration:
            raise SpaceError(f"criterion: {criterion!r} needs calibration batches")
        self.example = torch.zeros(1, identity.in_channels, identity.input_size, identity.input_size)
        modules = dict(model.named_modules())
        unknown = [n for n in keep_layers if n not in modules]
        if unknown:
            raise SpaceError(f"keep_layers: no such module(s) {unknown}; e.g. {list(modules)[1:6]}")
        self.keep_layers = tuple(keep_layers)
        self.fingerprint = fingerprint(identity.arch, model)
        self.layers = describe_layers(model, self.example)
        self.flops, self.params = count_cost(model, self.example)
        info = {layer.name: layer for layer in self.layers}
        dims = []
        graph, groups = self._groups(model)
        for root, group in groups:
            members: list[str] = []
            consumers: list[str] = []
            for dep, _ in group:
                name = self._names(model).get(dep.target.module)
                if name is None or not isinstance(dep.target.module, PRUNABLE):
                    continue
                (members if graph.is_out_channel_pruning_fn(dep.handler) else consumers).append(name)
            channels = graph.get_out_channels(root)
            min_kept = max(1, math.ceil(channels * (1 - max_ratio)))
            min_kept = min(channels, math.ceil(min_kept / round_to) * round_to)
            rname = self._names(model)[root]
            dims.append(Dimension(rname, int(channels), min_kept, round_to, tuple(dict.fromkeys(members)),
                                  tuple(dict.fromkeys(consumers)), info[rname]))
        if not dims:
            raise SpaceError("model: no prunable channel group found")
        self.dimensions = sorted(dims, key=lambda d: d.layer.index)  # forward order, as AMC walks it
        self._by_name = {d.name: d for d in dims}
        self._scores: dict[str, torch.Tensor] | None = None

    # -- graph helpers -------------------------------------------------------------------------
    @staticmethod
    def _names(model: nn.Module) -> dict[nn.Module, str]:
        return {m: n for n, m in model.named_modules()}

    def _graph(self, model: nn.Module) -> tuple[tp.DependencyGraph, list[nn.Module]]:
        model.eval()
        with torch.enable_grad():  # the graph is traced through autograd, even if the caller disabled it
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=self.example)
        modules = dict(model.named_modules())
        ignored = [modules[n] for n in self.keep_layers]
        head = output_layer(model, self.example)
        if head is not None:
            ignored.append(head)
        return graph, ignored

    def _groups(self, model: nn.Module) -> tuple[tp.DependencyGraph, list[tuple[nn.Module, tp.Group]]]:
        graph, ignored = self._graph(model)
        groups = graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE))
        return graph, [(group[0].dep.target.module, group) for group in groups]

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
        return {d.name: min(ratio, d.max_ratio) for d in self.dimensions}

    def apply(self, ratios: Mapping[str, float]) -> nn.Module:
        """A physically smaller copy of the base model; channels chosen by the space's criterion."""
        return self._prune(copy.deepcopy(self.base), self.kept_for(ratios), by_importance=True)

    def rebuild(self, model: nn.Module, plan: Plan) -> nn.Module:
        """Give a freshly built base architecture the plan's structure, ready to load pruned weights.

        Which channels go does not matter here (the pruned weights overwrite them), so no weights,
        criterion or data are needed: the plan's kept counts fully determine every shape.
        """
        self._check_identity(plan, check_weights=False)
        return self._prune(model, plan.kept, by_importance=False)

    def _prune(self, model: nn.Module, kept: Mapping[str, int], by_importance: bool) -> nn.Module:
        names = self._names(model)
        scorer = None
        if by_importance and any(kept[d.name] < d.channels for d in self.dimensions):
            torch.manual_seed(self.seed)  # the random criterion must pick the same channels every time
            scorer = prepare_scorer(self.criterion, model, self._calibration)
        selections = []
        graph, groups = self._groups(model)
        for root, group in groups:
            dim = self._by_name.get(names[root])
            if dim is None or kept[dim.name] >= dim.channels:
                continue
            n_prune = dim.channels - kept[dim.name]
            if scorer is None:
                idxs = list(range(dim.channels - n_prune, dim.channels))
            else:
                scores = scorer(group)
                if scores is None:
                    continue
                idxs = torch.argsort(scores, stable=True)[:n_prune].tolist()
            selections.append((root, group[0].dep.handler, idxs))
        # Score every group on the unpruned model first, then prune, as Torch-Pruning's own pruner does.
        for root, handler, idxs in selections:
            graph.get_pruning_group(root, handler, idxs).prune()
        model.zero_grad(set_to_none=True)
        return model.eval()

    def importance_scores(self) -> dict[str, torch.Tensor]:
        """Per-group channel importance on the base model (normalised within the group), cached."""
        if self._scores is None:
            model = copy.deepcopy(self.base)
            torch.manual_seed(self.seed)
            scorer = prepare_scorer(self.criterion, model, self._calibration)
            names = self._names(model)
            scores = {}
            for root, group in self._groups(model)[1]:
                s = scorer(group)
                if s is not None and names[root] in self._by_name:
                    scores[names[root]] = s.detach().float()
            self._scores = scores
        return self._scores

    def plan(self, ratios: Mapping[str, float], pruned: nn.Module | None = None) -> Plan:
        """Describe `ratios` fully: per group, per layer, and the cost before and after."""
        kept = self.kept_for(ratios)
        pruned = pruned if pruned is not None else self.apply(ratios)
        flops, params = count_cost(pruned, self.example)
        after = {layer.name: layer for layer in describe_layers(pruned, self.example)}
        return Plan(
            fingerprint=self.fingerprint, model=self.identity, criterion=self.criterion, round_to=self.round_to,
            groups=[GroupResult(name=d.name, members=list(d.members), ratio=float(ratios.get(d.name, 0.0)),
                                channels=d.channels, kept=kept[d.name]) for d in self.dimensions],
            layers=[LayerResult(name=b.name, kind=b.kind, in_before=b.in_channels, in_after=after[b.name].in_channels,
                                out_before=b.out_channels, out_after=after[b.name].out_channels,
                                params_before=b.params, params_after=after[b.name].params) for b in self.layers],
            flops_before=self.flops, flops_after=flops, params_before=self.params, params_after=params,
        )

    def cost(self, ratios: Mapping[str, float]) -> tuple[int, int]:
        """(MACs, params) of the model `ratios` would give."""
        return count_cost(self._prune(copy.deepcopy(self.base), self.kept_for(ratios), by_importance=False),
                          self.example)

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
