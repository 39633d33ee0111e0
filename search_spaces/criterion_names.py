"""The names of the criteria that rank a dimension's units, and which of them need data: torch-free,
so the job spec, the catalog and the pruning code read one list."""

from __future__ import annotations

from typing import Literal, get_args

ChannelCriterion = Literal["l1", "l2", "bn_scale", "fpgm", "lamp", "random", "taylor", "hessian", "activation"]
WeightCriterion = Literal["magnitude", "wanda", "obd"]  # rank single weights: fine-grained kinds only
CHANNEL_CRITERIA: tuple[str, ...] = get_args(ChannelCriterion)
DATA_DRIVEN = ("taylor", "hessian", "activation")  # channel criteria that need a calibration pass over data
DATA_FREE = tuple(c for c in CHANNEL_CRITERIA if c not in DATA_DRIVEN)
WEIGHT_ONLY_CRITERIA: tuple[str, ...] = get_args(WeightCriterion)
NEEDS_DATA = (*DATA_DRIVEN, "wanda", "obd")  # every criterion, channel or weight, that needs calibration batches
# Fine-grained criteria; "l1" of a single weight is its magnitude, so the default criterion works for both.
SPARSE_CRITERIA = {"l1": "magnitude", **{c: c for c in WEIGHT_ONLY_CRITERIA}}
