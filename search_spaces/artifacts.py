"""Saving and loading pruned models without pickle, and exporting them to ONNX.

A pruned model is stored as its plan (structure) plus safetensors (values). Loading builds the
base architecture from the zoo, gives it the plan's structure through Torch-Pruning, and loads
the weights strictly: the result computes the same outputs, bit for bit, as the saved model.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces.kinds import GRANULARITIES, RULES, SPARSE
from search_spaces.plan import Plan
from search_spaces.space import PruningSpace
from search_spaces.sparse_format import save_sparse
from search_spaces.weights import WeightsError, load_into, read_state_dict, save_weights
from search_spaces.zoo import build_model

PLAN_FILE, WEIGHTS_FILE, ONNX_FILE = "plan.json", "model.safetensors", "model.onnx"
SPARSE_WEIGHTS_FILE = "model.sparse.safetensors"


def save_pruned(out: str | Path, model: nn.Module, plan: Plan) -> dict[str, int]:
    """Plan + dense safetensors; a fine-grained plan also gets the sparse file (values + bitmask).
    Returns the bytes on disk of each weights file."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS_FILE, {"fingerprint": plan.fingerprint})
    sizes = {WEIGHTS_FILE: (folder / WEIGHTS_FILE).stat().st_size}
    if any(g.granularity in SPARSE for g in plan.groups):
        sizes[SPARSE_WEIGHTS_FILE] = save_sparse(model.state_dict(), folder / SPARSE_WEIGHTS_FILE)
    tmp = folder / (PLAN_FILE + ".tmp")
    tmp.write_text(plan.to_json())
    tmp.replace(folder / PLAN_FILE)
    return sizes


def space_for(base: nn.Module, plan: Plan) -> PruningSpace:
    """A space over `base` with the plan's kinds of dimension, enough to rebuild its structure."""
    kinds = sorted({GRANULARITIES[g.granularity].kind for g in plan.groups})
    sparse = any(RULES[k].sparse for k in kinds)
    settings: dict[str, Any] = {}
    for kind in kinds:
        groups = [g for g in plan.groups if GRANULARITIES[g.granularity].kind == kind]
        settings |= RULES[kind].settings_from_plan(groups)
    return PruningSpace(base, plan.model, criterion="magnitude" if sparse else "l1", round_to=plan.round_to,
                        max_ratio=0.999, keep_layers=plan.keep_layers, kinds=kinds, exclude=plan.excluded,
                        **settings)


def load_pruned(folder: str | Path, factories: Mapping[str, str] | None = None) -> tuple[nn.Module, Plan]:
    """Rebuild a pruned model from `plan.json` + `model.safetensors` in `folder`."""
    path = Path(folder)
    if not (path / PLAN_FILE).is_file():
        raise WeightsError(f"{path}: no {PLAN_FILE}; not a prunesearch artifact folder")
    plan = Plan.read(path / PLAN_FILE)
    base = build_model(plan.model, factories)
    model = space_for(base, plan).rebuild(base, plan)
    load_into(model, read_state_dict(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE))
    return model.eval(), plan


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> str | None:
    """Export with a dynamic batch axis; returns None on success or the reason export was impossible."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as exc:  # exporters raise many types; any failure means "no ONNX for this model"
        Path(path).unlink(missing_ok=True)
        return f"ONNX export failed for {type(model).__name__}: {type(exc).__name__}: {exc}"
    return None
