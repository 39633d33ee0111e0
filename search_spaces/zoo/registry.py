"""Resolve an architecture name to a freshly initialised `nn.Module`.

Names come from requests, so nothing here imports a module a request names: `torchvision:` and
`timm:` look names up inside those packages' own registries, and `factory:<name>` resolves only
through the operator's configured mapping of names to "pkg.module:function".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from torch import nn

from search_spaces.zoo.mobilenetv2 import MobileNetV2
from search_spaces.zoo.resnet_cifar import CifarResNet
from search_spaces.zoo.small_cnn import SmallCNN
from search_spaces.zoo.vgg import VGG
from search_spaces.zoo.vit import VisionTransformer


class UnknownModelError(ValueError):
    """The architecture name is not in the catalog (or its optional package is missing)."""


class ModelSpecLike(Protocol):
    arch: str
    num_classes: int
    in_channels: int
    input_size: int


Builder = Callable[[int, int, int], nn.Module]  # (num_classes, in_channels, input_size) -> model

BUILTIN: dict[str, Builder] = {
    "resnet20": lambda k, c, s: CifarResNet(20, k, c),
    "resnet32": lambda k, c, s: CifarResNet(32, k, c),
    "resnet56": lambda k, c, s: CifarResNet(56, k, c),
    "vgg11_bn": lambda k, c, s: VGG("vgg11", k, c, s),
    "vgg16_bn": lambda k, c, s: VGG("vgg16", k, c, s),
    "mobilenetv2": lambda k, c, s: MobileNetV2(k, c),
    "small_cnn": lambda k, c, s: SmallCNN(k, c),
    "vit_tiny": lambda k, c, s: VisionTransformer(k, c, s),
}


def available_models(factories: Mapping[str, str] | None = None) -> list[str]:
    names = sorted(BUILTIN)
    names += [f"factory:{n}" for n in sorted(factories or {})]
    for prefix, package in (("torchvision:<name>", "torchvision"), ("timm:<name>", "timm")):
        if importlib.util.find_spec(package) is not None:
            names.append(prefix)
    return names


def build_model(spec: ModelSpecLike, factories: Mapping[str, str] | None = None) -> nn.Module:
    """Build an untrained model; weights are loaded separately so every source is checked the same way."""
    arch, k, c, s = spec.arch, spec.num_classes, spec.in_channels, spec.input_size
    if arch in BUILTIN:
        return BUILTIN[arch](k, c, s)
    prefix, _, name = arch.partition(":")
    if prefix == "factory":
        target = (factories or {}).get(name)
        if target is None:
            raise UnknownModelError(f"model.arch: no registered factory named {name!r}")
        module_name, _, func_name = target.partition(":")
        factory = getattr(importlib.import_module(module_name), func_name)
        model: nn.Module = factory(num_classes=k, in_channels=c, input_size=s)
        return model
    if prefix == "torchvision":
        return _external("torchvision", name, lambda m: m.models.get_model(name, num_classes=k))
    if prefix == "timm":
        return _external("timm", name, lambda m: m.create_model(name, num_classes=k, in_chans=c))
    raise UnknownModelError(f"model.arch: unknown architecture {arch!r}; available: {available_models(factories)}")


def _external(package: str, name: str, create: Callable[[Any], nn.Module]) -> nn.Module:
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise UnknownModelError(
            f"model.arch: {package}:{name} needs the optional extra: pip install 'prunesearch[vision]'"
        ) from exc
    try:
        return create(module)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UnknownModelError(f"model.arch: {package} has no model {name!r} ({exc})") from exc
