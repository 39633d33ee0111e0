"""The pruning space of a model: its dimensions, and the operations on plans over them.

Every dimension is "how many of N units stay"; the granularity names the unit, so agents need no
case per kind and a plan is one mapping of dimension -> ratio. What a dimension is and how it
changes the model is its kind's business: one module per kind in `search_spaces/space_kinds/`
(channel groups and attention heads, residual blocks, unstructured weights, N:M layers), in the
manner of Torch-Pruning's per-layer-type pruner registry. This module keeps what every kind shares:
the plan's bookkeeping, cost, and the channel model the lookup table prices.

Binary dimensions (`block`, `nm`) are switched on at half their maximum ratio.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from search_spaces import sparsity
from search_spaces.criteria import Batches
from search_spaces.kinds import (
    GRANULARITIES,
    NEEDS_DATA,
    RULES,
    SPARSE_CRITERIA,
    KindError,
    SpaceKindRules,
    check_kinds,
    rules_of,
)
from search_spaces.layers import Dimension, SpaceError, count_cost, describe_layers
from search_spaces.plan import GroupResult, LayerResult, ModelIdentity, Plan, PlanMismatchError
from search_spaces.weights import fingerprint


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
        self.calibration = list(calibration) if calibration is not None else None
        if criterion in NEEDS_DATA and not self.calibration:
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
        self.rules: list[SpaceKindRules] = sorted((RULES[k] for k in set(self.kinds)), key=lambda r: r.order)
        dims = [d for rules in self.rules for d in rules.find(self, model, max_ratio)]
        if not dims:
            raise SpaceError(f"model: no prunable dimension of kind {'/'.join(self.kinds)} found")
        self.dimensions = sorted(dims, key=lambda d: (d.layer.index, not d.covers))  # forward order, a block first
        self._by_name = {d.name: d for d in dims}
        widths = [d for d in dims if GRANULARITIES[d.granularity].width]
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
        return bool(self.calibration)

    @property
    def sparse(self) -> bool:
        """Fine-grained dimensions: the model keeps its shapes and stores zeros."""
        return any(RULES[k].sparse for k in self.kinds)

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
        return {d.name: d.snap(ratio) if _thins(d) else 0.0 for d in self.dimensions}

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
            sparsity.apply_masks(model, {d.name: self._mask(d.name, kept[d.name]) for d in self.dimensions
                                         if kept[d.name] < d.units})
        return model

    def rebuild(self, model: nn.Module, plan: Plan) -> nn.Module:
        """Give a freshly built base architecture the plan's structure, ready to load pruned weights.

        Which channels go does not matter here (the pruned weights overwrite them), so no weights,
        criterion or data are needed: the plan's kept counts fully determine every shape.
        """
        self._check_identity(plan, check_weights=False)
        return self._prune(model, plan.kept, by_importance=False)

    def _prune(self, model: nn.Module, kept: Mapping[str, int], by_importance: bool) -> nn.Module:
        for rules in self.rules:  # widths first, then depth: each kind in its declared order
            rules.restructure(self, model, dict(kept), by_importance)
        model.zero_grad(set_to_none=True)
        return model.eval()

    def _mask(self, name: str, kept: int) -> torch.Tensor:
        d = self._by_name[name]
        return rules_of(d.granularity).mask(self, d, kept)

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
                                                         self.weight_criterion, self.calibration)
        return self._weight_scores

    def importance_scores(self) -> dict[str, torch.Tensor]:
        """Per-dimension unit importance on the base model, cached, for one global ranking: each kind
        scores its own (channels normalised within their group, heads averaged per head, fine-grained
        weights raw, as global magnitude pruning ranks them); binary dimensions are not ranked."""
        if self._scores is None:
            scores: dict[str, torch.Tensor] = {}
            for rules in self.rules:
                scores |= rules.importance(self)
            self._scores = scores
        return self._scores

    def unit_importance(self, how: str = "taylor") -> dict[str, torch.Tensor]:
        """Per-unit importance of every dimension a kind allocates across groups (channels and heads),
        *not* normalised within the group, so units of different groups compare: what an allocation
        across groups needs (HALP). `how`: taylor or magnitude (see the channel kind)."""
        scores: dict[str, torch.Tensor] = {}
        for rules in self.rules:
            scores |= rules.unit_importance(self, how)
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
        density = {d.name: kept[d.name] / d.units for d in self.dimensions if GRANULARITIES[d.granularity].sparse}
        gone = {layer for d in self.dimensions if kept[d.name] == 0 for layer in d.covers}  # a dropped block's
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



def _thins(d: Dimension) -> bool:
    """Whether a uniform ratio applies to `d`: it narrows widths or zeroes weights (depth is not uniform)."""
    info = GRANULARITIES[d.granularity]
    return info.width or info.sparse
