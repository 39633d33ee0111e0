"""Map a dataset spec to `DataSplits`; the only place that knows every dataset's name."""

from __future__ import annotations

from typing import Protocol

import torch

from search_spaces.datasets import sources
from search_spaces.datasets.splits import DatasetError, DataSplits, normalised_splits


class DatasetSpecLike(Protocol):
    name: str
    root: str | None
    download: bool
    val_size: int
    train_size: int | None
    test_size: int | None
    seed: int


BUILTIN = ("digits", "fashion-mnist", "cifar10", "synthetic", "imagefolder:<path>")


def available_datasets() -> list[str]:
    return list(BUILTIN)


def load_dataset(spec: DatasetSpecLike, input_size: int = 32, in_channels: int = 3,
                 num_classes: int = 10) -> DataSplits:
    """Load and split. `input_size`/`in_channels`/`num_classes` only shape synthetic data and image folders."""
    name = spec.name
    if name in ("fashion-mnist", "cifar10"):
        reader = sources.load_fashion_mnist if name == "fashion-mnist" else sources.load_cifar10
        x, y, tx, ty = reader(spec.root, spec.download)
        return normalised_splits(name, x, y, tx, ty, num_classes=10, val_size=spec.val_size, seed=spec.seed,
                                 train_size=spec.train_size, test_size=spec.test_size)
    if name == "digits":
        x, y = sources.load_digits_arrays()
        return _holdout(name, x, y, 10, spec, test_fraction=0.2)
    if name == "synthetic":
        n = (spec.train_size or 512) + spec.val_size + (spec.test_size or 256)
        x, y = sources.make_synthetic(n, num_classes, in_channels, input_size, spec.seed)
        test = spec.test_size or 256
        return normalised_splits(name, x[test:], y[test:], x[:test], y[:test], num_classes=num_classes,
                                 val_size=spec.val_size, seed=spec.seed, train_size=spec.train_size)
    if name.startswith("imagefolder:"):
        x, y, classes = sources.load_image_folder(name.split(":", 1)[1], input_size)
        return _holdout(name, x, y, len(classes), spec, test_fraction=0.2)
    raise DatasetError(f"dataset.name: unknown dataset {name!r}; available: {available_datasets()}")


def _holdout(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, spec: DatasetSpecLike,
             test_fraction: float) -> DataSplits:
    """Datasets without an official test split get a seeded one, disjoint from train and validation."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(spec.seed + 7919))
    n_test = spec.test_size or int(len(y) * test_fraction)
    test_idx, rest = perm[:n_test], perm[n_test:]
    return normalised_splits(name, x[rest], y[rest], x[test_idx], y[test_idx], num_classes=num_classes,
                             val_size=spec.val_size, seed=spec.seed, train_size=spec.train_size)
