"""Dataset readers and deterministic splits, on files the tests write themselves (no downloads)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from search_spaces.datasets import DatasetError, load_dataset
from search_spaces.datasets.sources import FASHION_MNIST_FILES, load_cifar10, read_idx


def spec(name: str, **kw: object) -> SimpleNamespace:
    base = {"name": name, "root": None, "download": False, "val_size": 20, "train_size": None, "test_size": None,
            "seed": 0}
    return SimpleNamespace(**{**base, **kw})


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, n_train: int = 100, n_test: int = 30) -> None:
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 255, (n_train, 28, 28)), "train_y": rng.integers(0, 10, n_train),
              "test_x": rng.integers(0, 255, (n_test, 28, 28)), "test_y": rng.integers(0, 10, n_test)}
    for key, name in FASHION_MNIST_FILES.items():
        write_idx(root / name, arrays[key])


def test_idx_reader_and_fashion_mnist_splits(tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path)
    assert read_idx(tmp_path / FASHION_MNIST_FILES["train_x"]).shape == (100, 28, 28)
    data = load_dataset(spec("fashion-mnist", root=str(tmp_path)))
    assert data.sizes() == {"train": 80, "val": 20, "test": 30}
    assert data.in_channels == 1 and data.input_size == 28
    assert abs(float(data.train.x.mean())) < 1e-4  # normalised with train statistics
    again = load_dataset(spec("fashion-mnist", root=str(tmp_path)))
    assert torch.equal(data.val.x, again.val.x)
    other = load_dataset(spec("fashion-mnist", root=str(tmp_path), seed=1))
    assert not torch.equal(data.val.x, other.val.x)


def test_truncated_idx_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 50) + b"\x01" * 10)
    with pytest.raises(DatasetError, match="holds 10 bytes"):
        read_idx(path)


def test_missing_files_name_the_root_field(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.root"):
        load_dataset(spec("fashion-mnist", root=str(tmp_path / "nowhere")))
    with pytest.raises(DatasetError, match=r"dataset\.root"):
        load_dataset(spec("cifar10", root=str(tmp_path)))


def test_unknown_dataset_and_oversized_validation_split() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet-22k'"):
        load_dataset(spec("imagenet-22k"))
    with pytest.raises(DatasetError, match=r"dataset\.val_size"):
        load_dataset(spec("digits", val_size=100_000))


def test_digits_splits_are_disjoint_and_deterministic() -> None:
    data = load_dataset(spec("digits", val_size=100))
    assert data.sizes()["val"] == 100 and data.input_size == 8
    rows = {tuple(r.flatten().tolist()) for r in data.test.x}
    assert not rows & {tuple(r.flatten().tolist()) for r in data.val.x}


def test_cifar_batches_load_but_a_malicious_pickle_does_not(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch))
    x, _y, tx, _ty = load_cifar10(str(tmp_path), download=False)
    assert x.shape == (50, 3, 32, 32) and tx.shape == (10, 3, 32, 32)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
        load_cifar10(str(tmp_path), download=False)


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            Image.new("RGB", (20, 20), color=(i * 10, 0, 0)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(spec(f"imagefolder:{tmp_path}", val_size=4), input_size=16)
    assert data.num_classes == 2 and data.input_size == 16 and data.in_channels == 3
    assert sum(data.sizes().values()) == 24
