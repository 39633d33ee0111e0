"""The kinds of dimension a space can hold, the criteria that rank their units, and the rules for
combining them: the one declaration the job spec, the catalog, the dashboard's form and the pruning
code read.

Each space kind is one module in `search_spaces/space_kinds/` with one `SpaceKindRules` subclass: it
declares its granularities (what a plan's unit is) and finds, applies, masks and scores its
dimensions. Defining the subclass registers it, and the package imports every module in it, so a new
kind is one new file. The names below (`SPACE_KINDS`, `GRANULARITIES`, `WIDTH`, ...) are derived from
that registry when this module is first imported, which `search_spaces/__init__.py` does before
anything else in the package: the kind modules may import only the criteria vocabulary above the
registry from here at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

if TYPE_CHECKING:
    import torch
    from torch import nn

    from search_spaces.layers import Dimension
    from search_spaces.plan import GroupResult
    from search_spaces.space import PruningSpace

ChannelCriterion = Literal["l1", "l2", "bn_scale", "fpgm", "lamp", "random", "taylor", "hessian", "activation"]
WeightCriterion = Literal["magnitude", "wanda", "obd"]  # rank single weights: fine-grained kinds only
CHANNEL_CRITERIA: tuple[str, ...] = get_args(ChannelCriterion)
DATA_DRIVEN = ("taylor", "hessian", "activation")  # channel criteria that need a calibration pass over data
DATA_FREE = tuple(c for c in CHANNEL_CRITERIA if c not in DATA_DRIVEN)
WEIGHT_ONLY_CRITERIA: tuple[str, ...] = get_args(WeightCriterion)
NEEDS_DATA = (*DATA_DRIVEN, "wanda", "obd")  # every criterion, channel or weight, that needs calibration batches
# Fine-grained criteria; "l1" of a single weight is its magnitude, so the default criterion works for both.
SPARSE_CRITERIA = {"l1": "magnitude", **{c: c for c in WEIGHT_ONLY_CRITERIA}}


@dataclass(frozen=True)
class GranularityInfo:
    """What a dimension of one granularity is: the plan, the pruning code, the lookup table, the
    strategies and the dashboard (through /catalog) read these facts here."""

    unit: str  # what its `units` and `kept` count, as the dashboard says it
    width: bool = False  # shrinks layer widths: priced by shape in the lookup table and the cost model
    binary: bool = False  # either on or off (half its maximum ratio switches it)
    sparse: bool = False  # fine-grained: shapes stay and zeros are stored
    kind: str = ""  # the space kind (`dimensions` entry) that finds it: filled in from its rules

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class SpaceKindRules:
    """One kind of dimension (a `dimensions` entry): what it finds in a model and how a plan's ratios
    for it change the model. Subclasses set `name` and register themselves; one instance serves every
    space. Kinds change a model in `order` (widths, then depth, then masks)."""

    name: ClassVar[str]
    order: ClassVar[int]
    granularities: ClassVar[dict[str, GranularityInfo]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in RULES:
                raise TypeError(f"space kind {cls.name!r} is declared twice")
            RULES[cls.name] = cls()

    @property
    def sparse(self) -> bool:
        return any(g.sparse for g in self.granularities.values())

    def find(self, space: PruningSpace, model: nn.Module, max_ratio: float) -> list[Dimension]:
        """This kind's dimensions in `model` (the space's base); layers it must leave go to `space.excluded`."""
        raise NotImplementedError

    def restructure(self, space: PruningSpace, model: nn.Module, kept: dict[str, int], by_importance: bool) -> None:
        """Change `model` in place to keep `kept` units of each of this kind's dimensions (structured kinds),
        choosing which by the space's criterion when `by_importance`."""

    def mask(self, space: PruningSpace, dim: Dimension, kept: int) -> torch.Tensor:
        """The keep-mask of one of this kind's dimensions' weights (fine-grained kinds)."""
        raise NotImplementedError(f"{self.name} dimensions are not masks")

    def importance(self, space: PruningSpace, model: nn.Module) -> dict[str, torch.Tensor]:
        """Per-unit importance of this kind's dimensions on the base, for one global ranking (none: not ranked)."""
        return {}

    def unit_importance(self, space: PruningSpace, model: nn.Module, how: str) -> dict[str, torch.Tensor]:
        """Per-unit importance that compares across dimensions (HALP's allocation); none if not allocated so."""
        return {}

    def report(self, space: PruningSpace) -> dict[str, Any]:
        """What a job's report.json says of this kind under `dimensions`, when it was searched."""
        return {}

    def settings_from_plan(self, groups: Sequence[GroupResult]) -> dict[str, Any]:
        """Space settings a stored plan's groups of this kind imply, to rebuild its structure."""
        return {}


RULES: dict[str, SpaceKindRules] = {}
importlib.import_module("search_spaces.space_kinds")  # registers every kind module in the package

KINDS: tuple[SpaceKindRules, ...] = tuple(sorted(RULES.values(), key=lambda r: r.order))
SPACE_KINDS: tuple[str, ...] = tuple(r.name for r in KINDS)
GRANULARITIES: dict[str, GranularityInfo] = {g: replace(info, kind=r.name) for r in KINDS
                                              for g, info in r.granularities.items()}
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
