"""VGG with BatchNorm for small inputs; the classifier adapts to any input size via adaptive pooling."""

from __future__ import annotations

import torch
from torch import nn

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, config: str, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for item in CONFIGS[config]:
            if item == "M":
                # Small inputs (28x28) cannot take five 2x pools; skip the ones that would reach 0.
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(True)]
            channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(channels, 512), nn.ReLU(True), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
