"""Deterministic train/validation/test splits held in memory as normalised tensors.

Plans are chosen on `val`; `test` is only ever used for reporting. Both are fixed by the seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


class DatasetError(ValueError):
    """A dataset that cannot be found, read or split as asked; the message names the spec field."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32, N x C x H x W, normalised with the train split's statistics
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self) if limit is None else min(limit, len(self))
        order = torch.randperm(len(self), generator=generator)[:n] if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.x[idx], self.y[idx]

    def head(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train.x.shape[-1])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def normalised_splits(name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                      test_y: torch.Tensor, num_classes: int, val_size: int, seed: int,
                      train_size: int | None = None, test_size: int | None = None) -> DataSplits:
    """Carve a seeded validation split out of train, then normalise everything with train statistics."""
    if val_size >= len(train_y):
        raise DatasetError(f"dataset.val_size: {val_size} leaves no training data (train has {len(train_y)})")
    perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_size is not None:
        train_idx = train_idx[:train_size]
    if test_size is not None:
        test_x, test_y = test_x[:test_size], test_y[:test_size]
    tx = train_x[train_idx].float()
    dims = [0, 2, 3]
    mean = tx.mean(dim=dims, keepdim=True)
    std = tx.std(dim=dims, keepdim=True).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - mean) / std).contiguous()

    return DataSplits(
        name=name,
        train=Split(norm(train_x[train_idx]), train_y[train_idx].long()),
        val=Split(norm(train_x[val_idx]), train_y[val_idx].long()),
        test=Split(norm(test_x), test_y.long()),
        num_classes=num_classes,
    )
