"""Model zoo names: built-ins, operator-registered factories, optional torchvision/timm."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from search_spaces.zoo import UnknownModelError, available_models, build_model
from tests.conftest import identity


def tiny_factory(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """An operator's own model, registered by configuration (never by a request)."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


@pytest.mark.parametrize("arch", ["resnet20", "resnet32", "resnet56", "vgg11_bn", "vgg16_bn", "mobilenetv2",
                                  "small_cnn"])
def test_builtins_take_channels_size_and_classes(arch: str) -> None:
    spec = identity(arch, 3, 16).model_copy(update={"num_classes": 7})
    assert build_model(spec)(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_registered_factory_is_the_only_way_to_import_code() -> None:
    factories = {"mine": "tests.test_zoo:tiny_factory"}
    spec = identity("factory:mine", 1, 8)
    assert build_model(spec, factories)(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    assert "factory:mine" in available_models(factories)
    with pytest.raises(UnknownModelError, match="no registered factory named 'os'"):
        build_model(identity("factory:os", 1, 8), factories)
    with pytest.raises(UnknownModelError, match=r"unknown architecture 'tests\.test_zoo:tiny_factory'"):
        build_model(identity("tests.test_zoo:tiny_factory", 1, 8), factories)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision installed")
def test_optional_extra_missing_says_how_to_install() -> None:
    with pytest.raises(UnknownModelError, match=r"prunesearch\[vision\]"):
        build_model(identity("torchvision:resnet18", 3, 32))
