"""Channel-importance criteria: Torch-Pruning importance objects plus the data pass each one needs.

Every criterion scores channels per coupled group (aggregated over all layers of the group by
Torch-Pruning's group reduction), so a residual stage is ranked as one unit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from search_spaces.criterion_names import DATA_FREE

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class UnknownCriterionError(ValueError):
    pass


def make_importance(name: str) -> tp.importance.Importance:
    factories = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
        "fpgm": tp.importance.FPGMImportance,
        "lamp": tp.importance.LAMPImportance,
        "random": tp.importance.RandomImportance,
        "taylor": tp.importance.GroupTaylorImportance,
        "hessian": tp.importance.GroupHessianImportance,
        "activation": tp.importance.ActivationImportance,
    }
    if name not in factories:
        raise UnknownCriterionError(f"criterion: unknown criterion {name!r}; available: {sorted(factories)}")
    return factories[name]()


@dataclass
class Scorer:
    """An importance function made ready for one model: data-driven criteria have seen their batches."""

    importance: tp.importance.Importance

    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        return self.importance(group)


def prepare_scorer(name: str, model: nn.Module, batches: Batches | None) -> Scorer:
    """Build the importance for `name` and run the forward/backward passes it needs on `model`."""
    imp = make_importance(name)
    if name in DATA_FREE:
        return Scorer(imp)
    if batches is None:
        raise UnknownCriterionError(f"criterion: {name!r} needs calibration data")
    was_training = model.training
    model.eval()  # BN statistics must not drift during calibration
    with torch.enable_grad():
        _calibrate(name, imp, model, batches)
    model.train(was_training)
    return Scorer(imp)


def _calibrate(name: str, imp: tp.importance.Importance, model: nn.Module, batches: Batches) -> None:
    if name == "taylor":
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    elif name == "hessian":
        assert isinstance(imp, tp.importance.GroupHessianImportance)
        imp.zero_grad()
        for x, y in batches:
            for loss in F.cross_entropy(model(x), y, reduction="none"):
                model.zero_grad(set_to_none=True)
                loss.backward(retain_graph=True)
                imp.accumulate_grad(model)
    elif name == "activation":
        assert isinstance(imp, tp.importance.ActivationImportance)
        xs = torch.cat([x for x, _ in batches])
        with torch.no_grad(), imp.compute_importance(model):
            model(xs)
