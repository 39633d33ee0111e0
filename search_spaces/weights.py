"""Reading and writing model weights without unpickling anything a user sent.

safetensors is the native format; `.pt`/`.pth` files are read with `torch.load(weights_only=True)`,
which refuses arbitrary Python objects.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"model.weights: file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            return load_file(str(p))
        if p.suffix in {".pt", ".pth", ".bin"}:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
                obj = obj["state_dict"]
            if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise WeightsError(f"model.weights: {p} does not hold a flat state dict of tensors")
            return obj
    except WeightsError:
        raise
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"model.weights: {p} holds Python objects, refused (only tensors are loaded): "
                           f"{str(exc).splitlines()[0]}") from exc
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(f"model.weights: cannot read {p}: {exc}") from exc
    raise WeightsError(f"model.weights: {p} must be .safetensors (or .pt/.pth read with weights_only)")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, turning shape and key mismatches into one readable error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:3]}{'…' if len(wrong) > 3 else ''}")
        raise WeightsError(f"model.weights: {source} does not fit the architecture: " + "; ".join(parts))
    # A tensor file carries no module versions (torch's `_metadata`), and a module that checks its
    # version when loading (torchvision's MNASNet) refuses a state without one: the file was written
    # from this architecture's state dict, so its versions are the model's own.
    versioned = OrderedDict(state)
    versioned._metadata = getattr(expected, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    model.load_state_dict(versioned, strict=True)


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, object] | None = None) -> None:
    """Write safetensors atomically; metadata (strings only in safetensors) is JSON-encoded per key."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(p)


def fingerprint(arch: str, model: nn.Module) -> str:
    """Identity of a base model: architecture name plus every tensor of its state, in key order."""
    h = hashlib.sha256(arch.encode())
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
