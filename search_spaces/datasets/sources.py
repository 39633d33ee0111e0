"""Readers for the raw formats: IDX (MNIST family), CIFAR-10 python batches, image folders, sklearn digits.

Each returns uint8/float tensors N x C x H x W plus int64 labels; normalisation and splitting are
done once, in `splits.py`.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from search_spaces.datasets.splits import DatasetError

FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_URL = "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_ROOTS = ("/usr/share/datasets/fashion-mnist",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as the ndarray its header describes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def find_root(root: str | None, candidates: tuple[str, ...], required: list[str]) -> Path | None:
    for option in ([root] if root else []) + list(candidates):
        path = Path(option).expanduser()
        if all((path / name).exists() for name in required):
            return path
    return None


Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # train x, train y, test x, test y


def load_fashion_mnist(root: str | None, download: bool) -> Arrays:
    files = list(FASHION_MNIST_FILES.values())
    path = find_root(root, FASHION_MNIST_ROOTS, files)
    if path is None and download:
        path = Path(root or "data/fashion-mnist")
        path.mkdir(parents=True, exist_ok=True)
        for name in files:
            urllib.request.urlretrieve(FASHION_MNIST_URL + name, path / name)
    if path is None:
        raise DatasetError(
            "dataset.root: Fashion-MNIST IDX files not found in "
            f"{[root, *FASHION_MNIST_ROOTS]}; set dataset.root or dataset.download: true"
        )
    arrays = {k: read_idx(path / v) for k, v in FASHION_MNIST_FILES.items()}
    images = {k: torch.from_numpy(arrays[k].copy()).unsqueeze(1) for k in ("train_x", "test_x")}
    labels = {k: torch.from_numpy(arrays[k].astype(np.int64)) for k in ("train_y", "test_y")}
    return images["train_x"], labels["train_y"], images["test_x"], labels["test_y"]


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 ships pickled dicts of numpy arrays; allow exactly the globals those need, nothing else."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch references forbidden global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(batch[b"labels"], dtype=np.int64)


def load_cifar10(root: str | None, download: bool) -> Arrays:
    base = Path(root or "data/cifar10")
    folder = base / "cifar-10-batches-py"
    if not folder.exists() and download:
        base.mkdir(parents=True, exist_ok=True)
        archive = base / "cifar-10-python.tar.gz"
        urllib.request.urlretrieve(CIFAR10_URL, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(base, filter="data")
    if not folder.exists():
        raise DatasetError(f"dataset.root: no cifar-10-batches-py folder under {base}")
    train = [_read_cifar_batch((folder / f"data_batch_{i}").read_bytes()) for i in range(1, 6)]
    test = _read_cifar_batch((folder / "test_batch").read_bytes())
    train_x, train_y = (torch.from_numpy(np.concatenate([b[i] for b in train])) for i in (0, 1))
    return train_x, train_y, torch.from_numpy(test[0]), torch.from_numpy(test[1])


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1)
    return x, torch.from_numpy(digits.target.astype(np.int64))


def load_image_folder(path: str, input_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Class-per-subfolder images, resized to `input_size`, held in memory (small datasets only)."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise DatasetError("imagefolder datasets need Pillow") from exc
    root = Path(path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DatasetError(f"dataset.name: imagefolder path {path!r} has no class subfolders")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).iterdir()):
            if file.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".webp"}:
                continue
            with Image.open(file) as img:
                arr = np.asarray(img.convert("RGB").resize((input_size, input_size)), dtype=np.uint8)
            images.append(arr.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetError(f"dataset.name: imagefolder path {path!r} holds no images")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), classes


def make_synthetic(n: int, num_classes: int, in_channels: int, input_size: int, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class prototypes plus noise: learnable in a few steps, so tests see accuracy move."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, in_channels, input_size, input_size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = protos[y] + 0.8 * torch.randn(n, in_channels, input_size, input_size, generator=g)
    return x, y
