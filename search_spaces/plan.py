"""The per-layer sparsity plan: what a job returns and what rebuilds a pruned model.

`ratios` is what a search asked for per dimension; `kept` is the unit count each dimension ended
with after bounds and `round_to`, and is all a rebuild needs (structure, no weights; fine-grained
zeros travel in the weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from search_spaces.kinds import Granularity

PLAN_SCHEMA_VERSION: Literal[3] = 3  # 3: a group's size is `units`; 2 called it `channels`; 1 held channel groups only


class PlanMismatchError(ValueError):
    """A plan applied to a model it was not made for."""


class ModelIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: str
    num_classes: int
    in_channels: int
    input_size: int


class GroupResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="root module path of the coupled channel group, attention module, block or layer")
    granularity: Granularity = Field("channel", description="the unit counted by units/kept: channel, head, "
                                     "block (1 unit: kept or dropped), unstructured (weights), nm (M or N per group)")
    members: list[str] = Field(description="layers whose output channels (or weights) this dimension removes")
    ratio: float = Field(ge=0, le=1, description="requested fraction of units to remove")
    units: int = Field(ge=1, description="units before pruning (schema 1 and 2: `channels`)")
    kept: int = Field(ge=0, description="units after pruning (0: a dropped block)")

    @model_validator(mode="before")
    @classmethod
    def _schema_2_name(cls, data: Any) -> Any:
        """Plans written before schema 3 called a group's size `channels`: they still load."""
        if isinstance(data, dict) and "channels" in data and "units" not in data:
            data = {**{k: v for k, v in data.items() if k != "channels"}, "units": data["channels"]}
        return data

    @property
    def effective_ratio(self) -> float:
        return 1 - self.kept / self.units


class LayerResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    params_before: int
    params_after: int

    @property
    def sparsity(self) -> float:
        return 1 - self.params_after / self.params_before if self.params_before else 0.0


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1, 2, 3] = PLAN_SCHEMA_VERSION
    fingerprint: str = Field(description="hash of the base model's architecture and weights")
    model: ModelIdentity
    criterion: str
    round_to: int
    keep_layers: list[str] = Field(default_factory=list, description="module paths the job kept whole")
    excluded: dict[str, str] = Field(default_factory=dict, description="layers whose output channels could not be "
                                     "pruned, with the reason (found by the space and its preflight)")
    groups: list[GroupResult]
    layers: list[LayerResult]
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int

    @property
    def ratios(self) -> dict[str, float]:
        return {g.name: g.ratio for g in self.groups}

    @property
    def kept(self) -> dict[str, int]:
        return {g.name: g.kept for g in self.groups}

    def to_json(self) -> str:
        data = self.model_dump()
        for layer, obj in zip(data["layers"], self.layers, strict=True):
            layer["sparsity"] = round(obj.sparsity, 6)
        for group, result in zip(data["groups"], self.groups, strict=True):
            group["effective_ratio"] = round(result.effective_ratio, 6)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        data = json.loads(Path(path).read_text())
        for layer in data.get("layers", []):
            layer.pop("sparsity", None)  # derived, written for readers only
        for group in data.get("groups", []):
            group.pop("effective_ratio", None)
        return cls.model_validate(data)
