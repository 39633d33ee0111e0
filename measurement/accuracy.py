"""Accuracy on a split, and BatchNorm recalibration after pruning.

Pruning removes channels whose statistics the BN layers were tracking jointly with the rest of
the network; re-estimating running mean/var on a few training batches (no gradient step) recovers
much of the lost accuracy and is cheap, so candidates are compared after it.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.datasets import Split


@torch.inference_mode()
def accuracy(model: nn.Module, split: Split, batch_size: int = 256, limit: int | None = None) -> float:
    model.eval()
    correct = total = 0
    for x, y in split.batches(batch_size, limit=limit):
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, train: Split, batches: int, batch_size: int, seed: int = 0) -> None:
    """Re-estimate BN running statistics as a cumulative average over `batches` training batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    g = torch.Generator().manual_seed(seed)
    for x, _ in train.batches(batch_size, shuffle=True, generator=g, limit=batches * batch_size):
        model(x)
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.eval()
