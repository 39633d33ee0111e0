"""Map a dataset spec to `DataSplits`; the only place that knows every dataset's name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog
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
# Datasets that read no folder: a `root` given for them is ignored, and said so.
ROOTLESS = {"digits": "bundled with scikit-learn", "synthetic": "generated from the seed",
            "imagefolder": "its folder is the path in dataset.name"}
log = structlog.get_logger()


def available_datasets() -> list[str]:
    return list(BUILTIN)


def missing_files(name: str, root: str | None) -> list[str] | None:
    """The folders searched when `name` cannot be loaded from `root` (None: it can, or reads no folder).
    Only looks for the files, reads nothing: the server asks this before it queues a job."""
    if name == "fashion-mnist":
        candidates = ([root] if root else []) + list(sources.FASHION_MNIST_ROOTS)
        found = sources.find_root(root, sources.FASHION_MNIST_ROOTS, list(sources.FASHION_MNIST_FILES.values()))
        return None if found is not None else candidates
    if name == "cifar10":
        base = Path(root or "data/cifar10")
        return None if (base / "cifar-10-batches-py").is_dir() else [str(base)]
    return None


def load_dataset(spec: DatasetSpecLike, input_size: int = 32, in_channels: int = 3,
                 num_classes: int = 10, val_fraction: float | None = None) -> DataSplits:
    """Load and split. `input_size`/`in_channels`/`num_classes` only shape synthetic data and image folders;
    `val_fraction`, when given, replaces `spec.val_size` by that fraction of the training data (small
    datasets such as digits have fewer samples than a fixed default)."""
    name = spec.name
    kind = name.split(":", 1)[0]
    if spec.root is not None and kind in ROOTLESS:
        log.warning("dataset.root_ignored", dataset=name, root=spec.root,
                    reason=f"{kind} reads no dataset folder ({ROOTLESS[kind]}); dataset.root has no effect")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise DatasetError(f"dataset.val_size: a validation fraction must lie in (0, 1), got {val_fraction}")

    def val_size(train_count: int) -> int:
        return spec.val_size if val_fraction is None else max(1, int(train_count * val_fraction))

    if name in ("fashion-mnist", "cifar10"):
        reader = sources.load_fashion_mnist if name == "fashion-mnist" else sources.load_cifar10
        x, y, tx, ty = reader(spec.root, spec.download)
        return normalised_splits(name, x, y, tx, ty, num_classes=10, val_size=val_size(len(y)), seed=spec.seed,
                                 train_size=spec.train_size, test_size=spec.test_size)
    if name == "digits":
        x, y = sources.load_digits_arrays()
        return _holdout(name, x, y, 10, spec, test_fraction=0.2, val_size=val_size)
    if name == "synthetic":
        train = spec.train_size or 512
        val = spec.val_size if val_fraction is None else max(1, int(train * val_fraction / (1 - val_fraction)))
        n = train + val + (spec.test_size or 256)
        x, y = sources.make_synthetic(n, num_classes, in_channels, input_size, spec.seed)
        test = spec.test_size or 256
        return normalised_splits(name, x[test:], y[test:], x[:test], y[:test], num_classes=num_classes,
                                 val_size=val, seed=spec.seed, train_size=spec.train_size)
    if name.startswith("imagefolder:"):
        x, y, classes = sources.load_image_folder(name.split(":", 1)[1], input_size)
        return _holdout(name, x, y, len(classes), spec, test_fraction=0.2, val_size=val_size)
    raise DatasetError(f"dataset.name: unknown dataset {name!r}; available: {available_datasets()}")


def _holdout(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, spec: DatasetSpecLike,
             test_fraction: float, val_size: Callable[[int], int]) -> DataSplits:
    """Datasets without an official test split get a seeded one, disjoint from train and validation."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(spec.seed + 7919))
    n_test = spec.test_size or int(len(y) * test_fraction)
    test_idx, rest = perm[:n_test], perm[n_test:]
    return normalised_splits(name, x[rest], y[rest], x[test_idx], y[test_idx], num_classes=num_classes,
                             val_size=val_size(len(rest)), seed=spec.seed, train_size=spec.train_size)
