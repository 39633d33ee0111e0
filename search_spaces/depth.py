"""Depth pruning: find residual blocks that can be removed whole, and remove them.

Only *identity-bypassable* blocks qualify: blocks computing `x + f(x)` (possibly followed by a
ReLU whose input is already non-negative), where replacing the block by `nn.Identity` is exactly
the block with `f = 0`. Removing such a block changes no tensor shape, so every other layer keeps
its weights and the pruned model can be fine-tuned from the same checkpoint; the change is a
bounded perturbation a short fine-tune can absorb. Blocks with a projection or downsampling
shortcut change shape or channels, so removing them would need new layers, not just fewer.

A block qualifies when both hold:

1. its structure says the residual path is an identity:
   * our `resnet_cifar.BasicBlock` with `shortcut` an `nn.Identity` (it returns `relu(f(x) + x)`
     and its input comes out of a ReLU, so dropping it gives `x = relu(x)`);
   * torchvision's `BasicBlock`/`Bottleneck` with `downsample is None` (matched by class name and
     module, so torchvision stays optional);
   * a transformer `Block` (ours, or timm's): both its attention and MLP sub-layers are residual;
   * a MobileNetV2 `InvertedResidual` (ours, or torchvision's) with its residual connection: it returns
     `x + f(x)` with no activation after the sum (the linear bottleneck);
2. a batch-1 forward pass confirms its output has its input's shape.

Only the outermost matching modules count: a block inside a block is part of the outer one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from search_spaces.zoo import mobilenetv2, resnet_cifar, vit

LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)  # the layers cost tables price (as PRUNABLE in space.py)
TORCHVISION_RESNET_BLOCKS = ("BasicBlock", "Bottleneck")
TORCHVISION_MOBILENET_MODULES = ("torchvision.models.mobilenetv2", "torchvision.models.mobilenetv3")


def is_residual_block(module: nn.Module) -> bool:
    """Whether the block's structure makes it exactly the identity when its residual branch is zero."""
    cls = type(module)
    if isinstance(module, resnet_cifar.BasicBlock):
        return isinstance(module.shortcut, nn.Identity)
    if cls.__module__ == "torchvision.models.resnet" and cls.__name__ in TORCHVISION_RESNET_BLOCKS:
        return getattr(module, "downsample", True) is None
    if isinstance(module, mobilenetv2.InvertedResidual):
        return module.use_residual
    if cls.__module__ in TORCHVISION_MOBILENET_MODULES and cls.__name__ == "InvertedResidual":
        return bool(getattr(module, "use_res_connect", False))
    return isinstance(module, vit.Block) or (cls.__name__ == "Block" and cls.__module__.startswith("timm."))


def _outermost_blocks(model: nn.Module) -> dict[nn.Module, str]:
    found: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer in found.values())
        if name and not inside and module not in found and is_residual_block(module):
            found[module] = name
    return found


def _shape_preserving_in_call_order(model: nn.Module, candidates: dict[nn.Module, str],
                                    example: torch.Tensor) -> list[str]:
    """Names of the candidates whose every call maps one tensor to a tensor of the same shape."""
    order: list[str] = []
    broken: set[str] = set()

    def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        name = candidates[module]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        same = (len(tensors) == 1 and isinstance(output, torch.Tensor) and output.shape == tensors[0].shape)
        if not same:
            broken.add(name)
        if name not in order:
            order.append(name)

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in candidates]
    try:
        model.eval()  # no BatchNorm statistics may change while we look
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return [name for name in order if name not in broken]


def bypassable_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Module paths of blocks that can be replaced by the identity, in forward order."""
    candidates = _outermost_blocks(model)
    if not candidates:
        return []
    return _shape_preserving_in_call_order(model, candidates, example)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model has no module named {name!r}") from None


def drop_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Replace each named block with nn.Identity in place; returns model."""
    for name in names:
        _submodule(model, name)  # fail on a typo rather than silently adding a module
        model.set_submodule(name, nn.Identity())
    return model


def block_layers(model: nn.Module, name: str) -> list[str]:
    """Full module paths of the conv/linear layers inside the block (for cost tables)."""
    block = _submodule(model, name)
    return [f"{name}.{sub}" for sub, m in block.named_modules() if isinstance(m, LAYER_TYPES)]
