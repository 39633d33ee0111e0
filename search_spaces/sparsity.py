"""Fine-grained (unstructured) and N:M weight sparsity: per-weight scores, masks, and mask bookkeeping.

Channel pruning (criteria.py / space.py) shrinks tensors; this module zeroes individual weights instead.
Masks are applied with `torch.nn.utils.prune`, so a fine-tune keeps pruned weights at zero, and made
permanent with `prune.remove`. Weights are always viewed as [out, in/groups * kh * kw] (row-major
flattening of a Conv/Linear weight), the layout PyTorch's semi-structured (2:4) sparse kernels use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from search_spaces.criteria import Batches
from search_spaces.criterion_names import WEIGHT_ONLY_CRITERIA
from search_spaces.layers import LayerInfo, output_layer

if TYPE_CHECKING:
    from search_spaces.space import PruningSpace

_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # weight dim 0 is the output (not ConvTranspose)
_OBD_CHUNK_ELEMENTS = 1 << 25  # per-sample gradients held at once (x4 bytes for fp32): bounds OBD memory


# ---------------------------------------------------------------- scores


def maskable_layers(space: PruningSpace, model: nn.Module) -> list[LayerInfo]:
    """The conv/linear layers a fine-grained kind may mask: all but the classifier, `keep_layers` and
    the excluded ones."""
    head = output_layer(model, space.example)
    skip = {*space.keep_layers, *space.excluded, *(n for n, m in model.named_modules() if m is head)}
    return [layer for layer in space.layers if layer.name not in skip]


def weight_scores(
    model: nn.Module, layers: Sequence[str], criterion: str, calibration: Batches | None
) -> dict[str, torch.Tensor]:
    """Per-weight importance (same shape as each layer's .weight) for the conv/linear layers named.

    - magnitude: |W|.
    - wanda (Sun et al. 2023): |W_ij| * ||X_j||_2, X_j the input feature j over every calibration
      sample and token (Linear inputs may be (B, C) or (B, N, C)). For convolutions X_j is the whole
      input channel j (all positions of all samples), broadcast over the kernel positions: an
      approximation of the im2col row norm that ignores padding and stride. Grouped and depthwise
      convolutions map each output channel's weight column j to input channel g * in/groups + j.
    - obd (LeCun et al. 1990): 0.5 * H_ii * w_i^2, H_ii approximated by the empirical Fisher, the mean
      of squared per-sample gradients of the cross-entropy loss (model run in eval mode).

    wanda and obd run `model` on `calibration` ((x, y) batches, iterated once); the model's train/eval
    mode is restored, and no .grad, hook or stale tensor is left on it. Scores are float32.
    """
    if criterion not in WEIGHT_ONLY_CRITERIA:
        raise ValueError(f"sparse_criterion: unknown criterion {criterion!r}; available: {list(WEIGHT_ONLY_CRITERIA)}")
    modules = {name: _layer(model, name) for name in dict.fromkeys(layers)}
    if criterion == "magnitude":
        return {name: _effective_weight(m).detach().abs().float() for name, m in modules.items()}
    if calibration is None:
        raise ValueError(f"sparse_criterion: {criterion!r} needs calibration data")
    was_training = model.training
    model.eval()  # BN statistics must not drift, dropout must not add noise
    try:
        if criterion == "wanda":
            return _wanda(modules, model, calibration)
        return _obd(modules, model, calibration)
    finally:
        model.train(was_training)


def _layer(model: nn.Module, name: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"sparse layers: model has no submodule {name!r}") from exc
    if not isinstance(module, _LAYER_TYPES):
        raise ValueError(f"sparse layers: {name!r} is a {type(module).__name__}, not a Linear/Conv layer")
    return module


def _effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer computes with; recomputed from orig * mask since `.weight` is refreshed only by forward."""
    orig, mask = getattr(module, "weight_orig", None), getattr(module, "weight_mask", None)
    if isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor):
        return orig * mask
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _wanda(modules: Mapping[str, nn.Module], model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
    sq_sums: dict[str, torch.Tensor] = {}

    def hook_for(name: str, module: nn.Module) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def hook(_: nn.Module, args: tuple[object, ...]) -> None:
            x = args[0]
            assert isinstance(x, torch.Tensor)
            s = _input_sq_norms(module, x.detach())
            sq_sums[name] = sq_sums[name] + s if name in sq_sums else s
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n, m)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    scores = {}
    for name, module in modules.items():
        if name not in sq_sums:
            raise ValueError(f"sparse_criterion: 'wanda': layer {name!r} received no input during calibration")
        weight = _effective_weight(module).detach().abs().float()
        scores[name] = weight * _per_weight_norms(module, sq_sums[name].sqrt())
    return scores


def _input_sq_norms(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each input feature (Linear: last dim; conv: channel dim) over everything else."""
    x = x.float()
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).pow(2).sum(0)
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    if x.dim() == weight.dim() - 1:  # unbatched conv input (C, *spatial)
        x = x.unsqueeze(0)
    return x.transpose(0, 1).reshape(x.shape[1], -1).pow(2).sum(1)


def _per_weight_norms(module: nn.Module, norms: torch.Tensor) -> torch.Tensor:
    """Input-feature norms laid out like the weight: [1, in] for Linear, [out, in/groups, 1, ...] for conv."""
    if isinstance(module, nn.Linear):
        return norms.unsqueeze(0)
    assert isinstance(module, nn.modules.conv._ConvNd)
    groups, out = module.groups, module.out_channels
    per_group = norms.reshape(groups, -1).repeat_interleave(out // groups, dim=0)  # [out, in/groups]
    return per_group.reshape(*per_group.shape, *([1] * (module.weight.dim() - 2)))


def _obd(modules: Mapping[str, nn.Module], model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
    """Empirical-Fisher OBD with per-sample gradients from torch.func (vmap; a per-sample loop when the
    model cannot be vmapped, e.g. data-dependent control flow). Gradients never touch `.grad`."""
    # A reparametrised layer recomputes .weight from .weight_orig in a pre-hook, so differentiate the latter.
    keys = {n: f"{n}.weight_orig" if hasattr(m, "weight_orig") else f"{n}.weight" for n, m in modules.items()}
    params = {keys[n]: getattr(m, keys[n].rsplit(".", 1)[1]).detach() for n, m in modules.items()}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, p, (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    grad_fn = torch.func.grad(loss)
    batched = torch.func.vmap(grad_fn, in_dims=(None, 0, 0))
    chunk = max(1, _OBD_CHUNK_ELEMENTS // max(1, sum(p.numel() for p in params.values())))
    sq_sums = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    count, use_vmap = 0, True
    try:
        with torch.enable_grad():
            for x, y in batches:
                for xc, yc in zip(x.split(chunk), y.split(chunk), strict=True):
                    grads: dict[str, torch.Tensor] | None = None
                    if use_vmap:
                        try:
                            grads = batched(params, xc, yc)
                        except RuntimeError:
                            use_vmap = False
                    if grads is None:
                        grads = {k: torch.stack(g) for k, g in _per_sample_loop(grad_fn, params, xc, yc).items()}
                    for k, g in grads.items():
                        sq_sums[k] += g.float().pow(2).sum(0)
                    count += len(xc)
    finally:
        _refresh_masked_weights(modules.values())
    if count == 0:
        raise ValueError("sparse_criterion: 'obd': calibration yielded no samples")
    return {n: 0.5 * (sq_sums[keys[n]] / count) * _effective_weight(m).detach().float().pow(2)
            for n, m in modules.items()}


def _per_sample_loop(
    grad_fn: Callable[..., dict[str, torch.Tensor]], params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, list[torch.Tensor]]:
    out: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    for xi, yi in zip(x, y, strict=True):
        for k, g in grad_fn(params, xi, yi).items():
            out[k].append(g)
    return out


def _refresh_masked_weights(modules: Iterable[nn.Module]) -> None:
    """functional_call leaves the prune hook's last `.weight` (a transformed tensor) behind: recompute it."""
    for module in modules:
        if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
            module.weight = _effective_weight(module)


# ---------------------------------------------------------------- masks


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_output: bool) -> torch.Tensor:
    """Bool keep-mask removing round(sparsity * n) lowest-score weights; per_output=True compares within
    each output row (Wanda's comparison group) so every output row loses the same fraction.

    Exactly that many weights go even when scores tie (ties are broken arbitrarily by topk)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity: must be in [0, 1], got {sparsity}")
    rows = _rows(scores) if per_output else scores.reshape(1, -1)
    drop = round(sparsity * rows.shape[1])
    keep = torch.ones(rows.shape, dtype=torch.bool, device=scores.device)
    if drop > 0:
        keep.scatter_(1, rows.topk(drop, dim=1, largest=False).indices, False)
    return keep.reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n highest-score weights in every group of m consecutive weights along the input dimension
    (weight viewed as [out, in*kh*kw], groups of m along the last axis, as PyTorch's semi-structured
    sparse kernels lay them out)."""
    if not 0 <= n <= m or m < 1:
        raise ValueError(f"n:m sparsity: need 0 <= n <= m and m >= 1, got {n}:{m}")
    rows = _rows(scores)
    if rows.shape[1] % m:
        raise ValueError(f"n:m sparsity: input dim {rows.shape[1]} is not divisible by m={m}")
    groups = rows.reshape(rows.shape[0], -1, m)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(scores.shape)


def nm_eligible(module: nn.Module, m: int = 4) -> bool:
    """A conv/linear layer whose flattened input dim (in/groups * kh * kw) is divisible by m."""
    return isinstance(module, _LAYER_TYPES) and module.weight[0].numel() % m == 0


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Every group of m along the input dim has at most n non-zeros (False if the dim is not divisible by m)."""
    rows = _rows(weight)
    if rows.shape[1] % m:
        return False
    return bool(((rows.reshape(rows.shape[0], -1, m) != 0).sum(2) <= n).all())


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[out, in/groups * prod(kernel)]; a 1-D tensor is one row."""
    if t.dim() == 0:
        raise ValueError("sparsity: a mask needs at least a 1-D tensor")
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)


# ---------------------------------------------------------------- applying masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Mask weights in place with torch.nn.utils.prune.custom_from_mask so a fine-tune keeps them zero.

    A layer masked before gets the AND of both masks (prune's PruningContainer): removed stays removed."""
    for name, mask in masks.items():
        module = _layer(model, name)
        weight = _effective_weight(module)
        if mask.shape != weight.shape:
            raise ValueError(f"sparse mask: {name!r} mask {tuple(mask.shape)} vs weight {tuple(weight.shape)}")
        prune.custom_from_mask(module, "weight", mask.to(device=weight.device, dtype=torch.bool))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """prune.remove on every reparametrised tensor: the zeros stay in .weight, weight_orig/_mask and hooks go.

    orig * mask leaves -0.0 where a negative weight was pruned; those become +0.0 so that bit-pattern
    sparse storage (sparse_format) sees them as zeros."""
    for module in model.modules():
        names = [h._tensor_name for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]
        for name in names:
            prune.remove(module, name)
            with torch.no_grad():
                tensor = getattr(module, name)
                tensor.masked_fill_(tensor == 0, 0.0)
    return model


def nonzero_parameters(model: nn.Module) -> int:
    """Non-zero entries of all parameters, each shared parameter once; a reparametrised tensor counts as
    orig * mask (its effective value), never as weight_orig."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            mask = getattr(module, pname[: -len("_orig")] + "_mask", None) if pname.endswith("_orig") else None
            value = p * mask if isinstance(mask, torch.Tensor) else p
            total += int(value.detach().count_nonzero())
    return total
