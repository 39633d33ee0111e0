"""A sparse safetensors layout, so the disk saving of unstructured sparsity can be measured and shipped.

A tensor that is smaller stored sparse becomes two safetensors entries, `<name>.__values` (its non-zero
entries in the original dtype, 1-D, row-major order) and `<name>.__bitmask` (numpy.packbits of the
flattened non-zero mask, uint8), with `{"shape", "dtype"}` JSON-encoded under metadata key `<name>`.
"Non-zero" means a non-zero bit pattern, so -0.0 and NaN payloads survive bit-exactly. Everything else
is stored dense as-is. Loading uses safetensors only (never unpickles) and validates the metadata.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT_KEY, FORMAT = "__format__", "prunesearch.sparse/1"
VALUES, BITMASK = ".__values", ".__bitmask"
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_ENTRY_OVERHEAD = 160  # header bytes of the extra entry + metadata record, besides the two names


def save_sparse(state: Mapping[str, torch.Tensor], path: str | Path) -> int:
    """Write `state` (sparse where smaller) atomically to `path`; returns the file's size in bytes.

    Make masked models permanent first (sparsity.make_permanent), or weight_orig is stored dense."""
    tensors: dict[str, torch.Tensor] = {}
    metadata = {FORMAT_KEY: FORMAT}
    for name, t in _prepared(state).items():
        if name.endswith((VALUES, BITMASK)) or name == FORMAT_KEY:
            raise ValueError(f"sparse format: tensor name {name!r} uses a reserved suffix/key")
        nonzero = _nonzero(t)
        if nonzero is None or not _smaller_sparse(name, t, int(nonzero.sum())):
            tensors[name] = t
            continue
        flat_mask = nonzero.reshape(-1)
        tensors[name + VALUES] = t.reshape(-1)[flat_mask].clone()
        tensors[name + BITMASK] = torch.from_numpy(np.packbits(flat_mask.numpy()))
        metadata[name] = json.dumps({"shape": list(t.shape), "dtype": str(t.dtype)})
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, p)
    return p.stat().st_size


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict back, bit-exact. Raises ValueError naming the tensor on inconsistent metadata."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"sparse format: cannot read {path} as safetensors: {exc}") from exc
    metadata.pop(FORMAT_KEY, None)
    state = {k: v for k, v in raw.items() if not k.endswith((VALUES, BITMASK))}
    for name, record in metadata.items():
        if name in state:
            raise ValueError(f"sparse format: tensor {name!r} is stored both dense and sparse")
        values, bitmask = raw.pop(name + VALUES, None), raw.pop(name + BITMASK, None)
        state[name] = _densify(name, record, values, bitmask)
    orphans = sorted(k for k in raw if k.endswith((VALUES, BITMASK)))
    if orphans:
        raise ValueError(f"sparse format: tensor {orphans[0]!r} has no shape/dtype record in the metadata")
    return state


def dense_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Size of a plain safetensors file of the same state (written to a temporary file and measured)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.safetensors"
        save_file(_prepared(state), str(path))
        return path.stat().st_size


def _prepared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing storage are copied (safetensors refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in state.items():
        c = t.detach().cpu().contiguous()
        ptr = c.untyped_storage().data_ptr()
        if ptr in storages and c.numel():
            c = c.clone()
        storages.add(c.untyped_storage().data_ptr())
        out[name] = c
    return out


def _nonzero(t: torch.Tensor) -> torch.Tensor | None:
    """Bool mask of entries with a non-zero bit pattern; None where the dtype cannot be viewed as an integer."""
    as_int = _INT_OF_SIZE.get(t.element_size())
    if as_int is None or t.dim() == 0 or t.is_complex():
        return None
    return t.view(as_int) != 0


def _smaller_sparse(name: str, t: torch.Tensor, nnz: int) -> bool:
    sparse = nnz * t.element_size() + math.ceil(t.numel() / 8) + _ENTRY_OVERHEAD + 2 * len(name.encode())
    return sparse < t.numel() * t.element_size()


def _densify(name: str, record: str, values: torch.Tensor | None, bitmask: torch.Tensor | None) -> torch.Tensor:
    """Rebuild one tensor, checking every claim the file makes before allocating anything from it."""
    try:
        info = json.loads(record)
        shape, dtype = info["shape"], info["dtype"]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"sparse format: tensor {name!r} has an unreadable metadata record") from exc
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise ValueError(f"sparse format: tensor {name!r} has an invalid shape {shape!r}")
    if values is None or bitmask is None:
        raise ValueError(f"sparse format: tensor {name!r} lacks its {VALUES} or {BITMASK} entry")
    if values.dim() != 1 or dtype != str(values.dtype):
        raise ValueError(f"sparse format: tensor {name!r} values are {values.dtype} {tuple(values.shape)}, "
                         f"metadata says {dtype} 1-D")
    numel = math.prod(shape)
    if bitmask.dtype != torch.uint8 or bitmask.dim() != 1 or bitmask.numel() != math.ceil(numel / 8):
        raise ValueError(f"sparse format: tensor {name!r} bitmask of {bitmask.numel()} bytes does not fit "
                         f"shape {shape} ({numel} elements)")
    bits = np.unpackbits(bitmask.numpy())
    if bits[numel:].any():
        raise ValueError(f"sparse format: tensor {name!r} bitmask sets bits past its {numel} elements")
    mask = torch.from_numpy(bits[:numel].astype(bool))
    if int(mask.sum()) != values.numel():
        raise ValueError(f"sparse format: tensor {name!r} has {values.numel()} values for "
                         f"{int(mask.sum())} set mask bits")
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[mask] = values
    return dense.reshape(shape)
