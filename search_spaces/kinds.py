"""The kinds of dimension a space can hold and the rules for combining them.

Kept free of torch so the job spec can check a request without importing the pruning stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

# The one declaration of the space's vocabulary: the job spec's types, the catalog, the dashboard's
# form and the pruning code all read these.
SpaceKind = Literal["channel", "block", "unstructured", "nm"]
ChannelCriterion = Literal["l1", "l2", "bn_scale", "fpgm", "lamp", "random", "taylor", "hessian", "activation"]
WeightCriterion = Literal["magnitude", "wanda", "obd"]  # rank single weights: fine-grained kinds only

Granularity = Literal["channel", "head", "block", "unstructured", "nm"]  # the unit a dimension counts


@dataclass(frozen=True)
class GranularityInfo:
    """What a dimension of one granularity is: the plan, the pruning code, the lookup table, the
    strategies and the dashboard (through /catalog) read these facts here."""

    kind: str  # the space kind (`dimensions` entry) that finds it
    unit: str  # what its `units` and `kept` count, as the dashboard says it
    width: bool = False  # shrinks layer widths: priced by shape in the lookup table and the cost model
    binary: bool = False  # either on or off (half its maximum ratio switches it)
    sparse: bool = False  # fine-grained: shapes stay and zeros are stored

    def describe(self) -> dict[str, Any]:
        return asdict(self)


GRANULARITIES: dict[str, GranularityInfo] = {
    "channel": GranularityInfo("channel", "channels", width=True),
    "head": GranularityInfo("channel", "heads", width=True),  # an attention module's fused qkv group
    "block": GranularityInfo("block", "block", binary=True),
    "unstructured": GranularityInfo("unstructured", "weights", sparse=True),
    "nm": GranularityInfo("nm", "of M", binary=True, sparse=True),
}
assert set(GRANULARITIES) == set(get_args(Granularity)), "declare each granularity's facts"

SPACE_KINDS: tuple[str, ...] = get_args(SpaceKind)
WIDTH = tuple(g for g, info in GRANULARITIES.items() if info.width)
SPARSE = tuple(g for g, info in GRANULARITIES.items() if info.sparse)  # kinds and granularities: the same names
BINARY = tuple(g for g, info in GRANULARITIES.items() if info.binary)
CHANNEL_CRITERIA: tuple[str, ...] = get_args(ChannelCriterion)
DATA_DRIVEN = ("taylor", "hessian", "activation")  # channel criteria that need a calibration pass over data
DATA_FREE = tuple(c for c in CHANNEL_CRITERIA if c not in DATA_DRIVEN)
WEIGHT_ONLY_CRITERIA: tuple[str, ...] = get_args(WeightCriterion)
NEEDS_DATA = (*DATA_DRIVEN, "wanda", "obd")  # every criterion, channel or weight, that needs calibration batches
# Fine-grained criteria; "l1" of a single weight is its magnitude, so the default criterion works for both.
SPARSE_CRITERIA = {"l1": "magnitude", **{c: c for c in WEIGHT_ONLY_CRITERIA}}


def criteria_for(kind: str) -> list[str]:
    """The criteria a space of `kind` accepts (what the catalog offers per kind)."""
    return list(SPARSE_CRITERIA) if kind in SPARSE else list(CHANNEL_CRITERIA)


class KindError(ValueError):
    """A combination of dimension kinds, criterion and budget that cannot work; the message starts
    with the field to fix."""


def check_kinds(kinds: Sequence[str], criterion: str, nm: tuple[int, int], budget_metric: str | None = None) -> None:
    unknown = [k for k in kinds if k not in SPACE_KINDS]
    if unknown or not kinds:
        raise KindError(f"dimensions: unknown kind(s) {unknown}; available: {list(SPACE_KINDS)}")
    sparse = [k for k in kinds if k in SPARSE]
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
