"""The job spec: one pydantic schema shared by the CLI, the REST API and the scheduler.

Every model forbids unknown fields so a typo is an error naming the field, not a silent default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from agents.strategies import BisectionStrategy, StrategySpec, Strict
from search_spaces.kinds import KINDS, SPACE_KINDS, ChannelCriterion, KindError, SpaceKind, WeightCriterion, check_kinds

Criterion = Literal[ChannelCriterion, WeightCriterion]
RuntimeName = Literal["eager", "torchscript", "onnxruntime"]
DEMO_JOB = Path(__file__).resolve().parents[1] / "examples" / "digits_demo.yaml"  # `make demo`, the form's defaults
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_SAMPLES = 100_000_000


class TrainWeights(Strict):
    """Train the base model inside the job (the demo uses this so it needs no file)."""

    train_epochs: int = Field(ge=1, le=200)
    lr: float = Field(0.1, gt=0, le=10)
    batch_size: int = Field(128, ge=1, le=4096)


class ModelSpec(Strict):
    arch: str = Field(examples=["resnet20"])
    num_classes: int = Field(10, ge=2, le=100_000)
    in_channels: int = Field(3, ge=1, le=64)
    input_size: int = Field(32, ge=4, le=1024)
    weights: str | TrainWeights | None = Field(
        None, description="safetensors (or weights-only torch) file path, {train_epochs: N}, or null for random init")


class DatasetSpec(Strict):
    name: str = Field(examples=["fashion-mnist", "digits", "cifar10", "synthetic", "imagefolder:/data/x"])
    root: str | None = None
    download: bool = False
    val_size: int = Field(5000, ge=1, le=MAX_SAMPLES)
    train_size: int | None = Field(None, ge=1, le=MAX_SAMPLES)
    test_size: int | None = Field(None, ge=1, le=MAX_SAMPLES)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class DeviceSpec(Strict):
    name: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", examples=["cpu", "cuda:0"])
    threads: int = Field(1, ge=1, le=256)
    batch_size: int = Field(32, ge=1, le=4096)
    runtime: RuntimeName = "eager"
    cores: list[Annotated[int, Field(ge=0, le=4095)]] | None = Field(
        None, max_length=4096, description="CPU cores to pin while timing; default: the first `threads`")
    node: str | None = Field(None, min_length=1, max_length=200, examples=["192.168.1.20", "jetson"],
                             description="Ray backend: time latency on this node (node id, IP, hostname or a custom "
                                         "resource it declares); default: any node with the device")

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")


class MeasurementSpec(Strict):
    """How latency is timed. Timing on a shared machine is noisy, so the meter repeats until the
    confidence interval of the candidate/base latency ratio is as narrow as asked, or time runs out."""

    warmup: int = Field(5, ge=0, le=1000)
    repeats: int = Field(15, ge=3, le=10_000, description="timed pairs per round")
    ci_halfwidth: float = Field(0.02, gt=0, le=1, description="relative half-width of the ratio's CI to stop at")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    max_seconds: float = Field(20.0, gt=0, le=3600)
    pin_cores: bool = True


class BudgetSpec(Strict):
    metric: Literal["latency_ms", "flops", "params"] = Field(
        description="params counts non-zero parameters when the dimensions are fine-grained")
    target: float = Field(gt=0, le=1e18, description="a fraction in (0, 1] if relative, else ms, MACs or params")
    relative: bool = Field(True, description="target is a fraction of the base model's value")
    tolerance: float = Field(0.03, ge=0, le=0.5, description="relative slack on a measured latency budget")

    @model_validator(mode="after")
    def _relative_in_range(self) -> BudgetSpec:
        if self.relative and not 0 < self.target <= 1:
            raise ValueError("budget.target: a relative target must be in (0, 1]")
        return self

    def limit(self, base: float) -> float:
        """The budget in the metric's unit, given the base model's value."""
        return self.target * base if self.relative else self.target


class EvaluationSpec(Strict):
    batch_size: int = Field(256, ge=1, le=8192)
    val_limit: int | None = Field(None, ge=1, le=MAX_SAMPLES,
                                  description="evaluate candidates on the first N validation samples")
    bn_recalibration: bool = True
    recalibration_batches: int = Field(10, ge=1, le=1000)
    calibration_batches: int = Field(4, ge=1, le=1000, description="batches for data-driven criteria")
    uniform_sweep: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8], max_length=20,
        description="uniform ratios timed and scored beside the search: the line the dashboard's accuracy-latency "
                    "chart judges the job's plans against ([] for none)")
    selection_steps: int = Field(20, ge=0, le=10_000, description="fine-tune steps the leading plans get before "
                                 "the final choice among them (0: choose on the search's own scores)")


class FinetuneSpec(Strict):
    short_steps: int = Field(0, ge=0, le=100_000, description="SGD steps after pruning, per candidate")
    final_epochs: float = Field(0, ge=0, le=1000, description="fine-tune epochs of the returned model (cosine LR)")
    distill: bool = Field(True, description="final fine-tune distils from the unpruned base model as teacher")
    distill_temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature of the distillation")
    distill_alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term (rest: labels)")
    base_lr: float = Field(0.1, gt=0, le=10, description="the learning rate the base model was trained with")
    lr: float | None = Field(None, gt=0, le=10, description="fine-tune LR; default base_lr / 10")
    batch_size: int = Field(128, ge=1, le=8192)

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr / 10


class ExecutionSpec(Strict):
    backend: Literal["ray", "local"] = Field("ray", description="ray: evaluations on Ray actors; local: in-process")
    accuracy_workers: int | None = Field(None, ge=1, le=1024, description="default: every CPU not used for timing")


class JobSpec(Strict):
    name: str | None = Field(None, max_length=200)
    model: ModelSpec
    dataset: DatasetSpec
    device: DeviceSpec = DeviceSpec()
    budget: BudgetSpec
    strategy: StrategySpec = Field(default_factory=lambda: BisectionStrategy(name="uniform"))
    criterion: Criterion = Field("l1", description="channels: l1, l2, bn_scale, taylor, hessian, fpgm, lamp, random, "
                                 "activation; single weights (unstructured, nm): l1 = magnitude, wanda, obd")
    dimensions: list[SpaceKind] = Field(
        default_factory=lambda: list[SpaceKind](["channel"]), min_length=1, max_length=len(SPACE_KINDS),
        description="what the search may remove: " + ", ".join(f"{r.name} ({r.summary})" for r in KINDS)
                    + "; channel and block combine, the fine-grained kinds stand alone")
    nm: str = Field("2:4", pattern=r"^[1-9][0-9]?:[1-9][0-9]?$", description="N:M pattern of nm dimensions")
    round_to: int = Field(1, ge=1, le=1024)
    max_ratio: float = Field(0.9, gt=0, lt=1, description="largest fraction of a group's channels to remove")
    keep_layers: list[str] = Field(default_factory=list, max_length=10_000,
                                   description="module paths whose outputs are never pruned")
    evaluation: EvaluationSpec = EvaluationSpec()
    measurement: MeasurementSpec = MeasurementSpec()
    finetune: FinetuneSpec = FinetuneSpec()
    execution: ExecutionSpec = ExecutionSpec()
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("keep_layers")
    @classmethod
    def _no_blank_layers(cls, v: list[str]) -> list[str]:
        if any(not name.strip() for name in v):
            raise ValueError("keep_layers: empty module path")
        return v

    @field_validator("dimensions")
    @classmethod
    def _distinct_dimensions(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _kinds_fit(self) -> JobSpec:
        try:
            check_kinds(self.dimensions, self.criterion, self.nm_pair, self.budget.metric)
        except KindError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def nm_pair(self) -> tuple[int, int]:
        n, m = self.nm.split(":")
        return int(n), int(m)


class SpecError(ValueError):
    """A job file that cannot be read or does not validate; the message names each bad field."""


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"{loc}: {err['msg']}")
    return "\n".join(lines)


def parse_spec(data: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from exc


def load_spec(path: str | Path) -> JobSpec:
    """Read a YAML or JSON job file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(f"{p}: cannot read job file ({exc.strerror})") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{p}: a job file must hold a mapping at the top level")
    return parse_spec(data)
