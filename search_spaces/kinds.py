"""The space's vocabulary: the kinds of dimension a space can hold, their granularities, the criteria
that rank their units, and the rules for combining them. The job spec, the catalog, the dashboard's
form and the pruning code read it here.

Each space kind is one module in `search_spaces/space_kinds/` with one `SpaceKindRules` subclass
(`space_kinds/base.py`): it declares its granularities (what a plan's unit is) and finds, changes,
masks and scores its dimensions. Defining the subclass registers it, and this module imports every
module in that package, so a new kind is one new file. The names below are derived from the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from search_spaces import space_kinds
from search_spaces.criterion_names import (
    CHANNEL_CRITERIA,
    DATA_DRIVEN,
    DATA_FREE,
    NEEDS_DATA,
    SPARSE_CRITERIA,
    WEIGHT_ONLY_CRITERIA,
    ChannelCriterion,
    WeightCriterion,
)
from search_spaces.space_kinds.base import GRANULARITIES as _REGISTERED
from search_spaces.space_kinds.base import RULES, GranularityInfo, SpaceKindRules

__all__ = [
    "CHANNEL_CRITERIA", "DATA_DRIVEN", "DATA_FREE", "GRANULARITIES", "KINDS", "NEEDS_DATA", "RULES", "SPACE_KINDS",
    "SPARSE", "SPARSE_CRITERIA", "WEIGHT_ONLY_CRITERIA", "WIDTH", "ChannelCriterion", "Granularity", "GranularityInfo",
    "KindError", "SpaceKind", "SpaceKindRules", "WeightCriterion", "check_kinds", "criteria_for", "rules_of"]

for _module in pkgutil.iter_modules(space_kinds.__path__):
    importlib.import_module(f"{space_kinds.__name__}.{_module.name}")  # defining its rules registers the kind

KINDS: tuple[SpaceKindRules, ...] = tuple(sorted(RULES.values(), key=lambda r: r.order))
SPACE_KINDS: tuple[str, ...] = tuple(r.name for r in KINDS)
GRANULARITIES: dict[str, GranularityInfo] = {g: _REGISTERED[g] for r in KINDS for g in r.granularities}
if TYPE_CHECKING:
    SpaceKind = str
    Granularity = str
else:
    SpaceKind = Literal[SPACE_KINDS]
    Granularity = Literal[tuple(GRANULARITIES)]
WIDTH = tuple(g for g, info in GRANULARITIES.items() if info.width)
SPARSE = tuple(g for g, info in GRANULARITIES.items() if info.sparse)


def rules_of(granularity: str) -> SpaceKindRules:
    """The kind that finds dimensions of `granularity`."""
    return RULES[GRANULARITIES[granularity].kind]


def criteria_for(kind: str) -> list[str]:
    """The criteria a space of `kind` accepts (what the catalog offers per kind)."""
    return list(SPARSE_CRITERIA) if RULES[kind].sparse else list(CHANNEL_CRITERIA)


class KindError(ValueError):
    """A combination of dimension kinds, criterion and budget that cannot work; the message starts
    with the field to fix."""


def check_kinds(kinds: Sequence[str], criterion: str, nm: tuple[int, int], budget_metric: str | None = None) -> None:
    unknown = [k for k in kinds if k not in SPACE_KINDS]
    if unknown or not kinds:
        raise KindError(f"dimensions: unknown kind(s) {unknown}; available: {list(SPACE_KINDS)}")
    sparse = [k for k in kinds if RULES[k].sparse]
    if sparse and len(set(kinds)) > 1:
        others = sorted(set(kinds) - {sparse[0]})
        raise KindError(f"dimensions: {sparse[0]} cannot be combined with {others} (fine-grained zeros are chosen "
                        "on a fixed structure)")
    if sparse and criterion not in SPARSE_CRITERIA:
        raise KindError(f"criterion: {criterion!r} ranks channels; {sparse[0]} dimensions take one of "
                        f"{sorted(SPARSE_CRITERIA)}")
    if not sparse and criterion in WEIGHT_ONLY_CRITERIA:
        raise KindError(f"criterion: {criterion!r} ranks single weights; it needs unstructured or nm dimensions")
    n, m = nm
    if not 0 < n < m:
        raise KindError(f"nm: need 0 < N < M, got {n}:{m}")
    if sparse and budget_metric not in (None, "params"):
        raise KindError(f"budget.metric: {sparse[0]} sparsity buys size, not {budget_metric} (dense kernels run the "
                        "zeros); use params, which counts non-zero parameters here")
