"""What a space kind is (`SpaceKindRules`) and the registry its subclasses enter by being defined.

Imports nothing of the project at run time, so that every module the kinds use (`layers.py` included)
can read the registry without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from search_spaces.layers import Dimension
    from search_spaces.plan import GroupResult
    from search_spaces.space import PruningSpace

RULES: dict[str, SpaceKindRules] = {}  # kind name -> its rules, in the order they were defined
GRANULARITIES: dict[str, GranularityInfo] = {}  # granularity -> its facts, `kind` filled in


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
    summary: ClassVar[str]  # what a job that names this kind lets the search remove
    order: ClassVar[int]
    granularities: ClassVar[dict[str, GranularityInfo]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in RULES:
                raise TypeError(f"space kind {cls.name!r} is declared twice")
            RULES[cls.name] = cls()
            GRANULARITIES.update({g: replace(info, kind=cls.name) for g, info in cls.granularities.items()})

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

    def importance(self, space: PruningSpace) -> dict[str, torch.Tensor]:
        """Per-unit importance of this kind's dimensions on the base, for one global ranking (none: not ranked)."""
        return {}

    def unit_importance(self, space: PruningSpace, how: str) -> dict[str, torch.Tensor]:
        """Per-unit importance that compares across dimensions (HALP's allocation); none if not allocated so."""
        return {}

    def report(self, space: PruningSpace) -> dict[str, Any]:
        """What a job's report.json says of this kind under `dimensions`, when it was searched."""
        return {}

    def settings_from_plan(self, groups: Sequence[GroupResult]) -> dict[str, Any]:
        """Space settings a stored plan's groups of this kind imply, to rebuild its structure."""
        return {}


