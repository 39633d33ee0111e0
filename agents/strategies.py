"""Every search strategy, declared once: its parameters (the job spec's `strategy` union), the agent
class that runs it, and the small search the test suites run it with.

The spec, `/catalog`, the dashboard form, the schedule launcher (a `warm_start` field is the warm-start
capability) and the conformance suites read these classes: adding a strategy is one parameters class
here, listed in `StrategySpec`, plus its agent module. Agent classes are named as strings and imported
on first use (`agents.registry`): stable-baselines3 and Optuna are slow to import, and the spec must
not need them.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.halp import VARIANT_PATTERN


class Strict(BaseModel):
    """The spec's base: an unknown field is an error naming it, never a silent default."""

    model_config = ConfigDict(extra="forbid")


class StrategyParams(Strict):
    """A strategy's parameters. `agents` maps each name its `name` literal allows to the agent class
    ("module:Class"); `smoke` is a search small enough for the test suites to run in seconds."""

    agents: ClassVar[dict[str, str]]
    smoke: ClassVar[dict[str, Any]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        names = set(typing.get_args(cls.model_fields["name"].annotation))
        if names != set(cls.agents):
            raise TypeError(f"{cls.__name__}: agents for {sorted(cls.agents)}, but its names are {sorted(names)}")


class BisectionStrategy(StrategyParams):
    """Baselines: one global knob (uniform ratio, or global importance threshold) bisected to the budget."""

    agents: ClassVar[dict[str, str]] = {"uniform": "agents.bisection:UniformAgent",
                                        "global": "agents.bisection:GlobalAgent"}
    smoke: ClassVar[dict[str, Any]] = {"steps": 5}

    name: Literal["uniform", "global"]
    steps: int = Field(12, ge=2, le=60, description="bisection steps on the knob")


class SensitivityStrategy(StrategyParams):
    """Prune one group at a time at each ratio, then one accuracy-loss threshold sets every group's ratio."""

    agents: ClassVar[dict[str, str]] = {"sensitivity": "agents.sensitivity:SensitivityAgent"}
    smoke: ClassVar[dict[str, Any]] = {"ratios": [0.3, 0.6], "threshold_steps": 8}

    name: Literal["sensitivity"]
    ratios: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], min_length=1, max_length=50)
    threshold_steps: int = Field(20, ge=2, le=100, description="bisection steps on the accuracy-loss threshold")

    @field_validator("ratios")
    @classmethod
    def _ratios_in_range(cls, v: list[float]) -> list[float]:
        if any(not 0 < r < 1 for r in v):
            raise ValueError("every ratio must be in (0, 1)")
        return sorted(set(v))


WarmStart = dict[str, Annotated[float, Field(ge=0, lt=1)]] | None


class NetAdaptStrategy(StrategyParams):
    """Iterations that each remove a shrinking slice of the resource; keep the best candidate per iteration."""

    agents: ClassVar[dict[str, str]] = {"netadapt": "agents.netadapt:NetAdaptAgent"}
    smoke: ClassVar[dict[str, Any]] = {"initial_fraction": 0.25, "decay": 1.0, "short_steps": 2,
                                       "max_iterations": 6}

    name: Literal["netadapt"]
    initial_fraction: float = Field(0.1, gt=0, lt=1, description="first iteration removes this fraction of the base")
    decay: float = Field(0.96, gt=0, le=1, description="each iteration's slice is the previous one times this")
    short_steps: int = Field(20, ge=0, le=100_000, description="fine-tune steps per candidate")
    max_iterations: int = Field(40, ge=1, le=1000)
    warm_start: WarmStart = Field(None, max_length=10_000, description="start the iterations from this plan (group -> "
                                  "ratio), e.g. the previous scheduled run's; it is checked first and returned if "
                                  "it already meets the budget")


class AMCStrategy(StrategyParams):
    """DDPG agent (stable-baselines3) walking the groups, one action (ratio) per group."""

    agents: ClassVar[dict[str, str]] = {"amc": "agents.amc:AMCAgent"}
    smoke: ClassVar[dict[str, Any]] = {"episodes": 6, "warmup_episodes": 3, "batch_size": 8}

    name: Literal["amc"]
    episodes: int = Field(120, ge=2, le=100_000)
    warmup_episodes: int = Field(20, ge=1, le=100_000, description="episodes of random actions before learning")
    reward: Literal["accuracy_guaranteed", "resource_constrained"] = "accuracy_guaranteed"
    lower: float = Field(0.0, ge=0, lt=1, description="smallest ratio an action can ask for")
    upper: float = Field(0.8, gt=0, lt=1, description="largest ratio an action can ask for")
    noise_sigma: float = Field(0.5, ge=0, le=2, description="initial exploration noise (truncated normal)")
    noise_decay: float = Field(0.95, gt=0, le=1, description="per-episode decay of the exploration noise")
    baseline_momentum: float = Field(0.95, ge=0, lt=1, description="moving-average reward baseline")
    batch_size: int = Field(64, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> AMCStrategy:
        if self.lower >= self.upper:
            raise ValueError("strategy.lower must be below strategy.upper")
        if self.warmup_episodes >= self.episodes:
            raise ValueError("strategy.warmup_episodes must be fewer than strategy.episodes")
        return self


class OptunaStrategy(StrategyParams):
    """Optuna: TPE for one objective under the budget, or NSGA-II for accuracy vs latency (a Pareto front)."""

    agents: ClassVar[dict[str, str]] = {"optuna": "agents.optuna_search:OptunaAgent"}
    smoke: ClassVar[dict[str, Any]] = {"trials": 8, "parallel": 2}

    name: Literal["optuna"]
    sampler: Literal["tpe", "nsga2"] = "tpe"
    trials: int = Field(60, ge=2, le=100_000)
    parallel: int = Field(2, ge=1, le=256, description="trials asked at once and evaluated in parallel")
    storage: str | None = Field(None, description="Optuna storage URL; default: SQLite in the job folder")
    warm_start: WarmStart = Field(None, max_length=10_000, description="a plan (group -> ratio) tried early, e.g. the "
                                  "previous scheduled run's best; groups the model lacks are ignored")


class HALPStrategy(StrategyParams):
    """Latency-aware resource allocation (HALP, NVIDIA 2022): what each unit removed loses against its
    lookup-table latency (or MACs, params), allocated greedily as a knapsack under the budget, each
    variant landed on the budget on the device and scored (BN recalibration, EagleEye); the best is kept."""

    agents: ClassVar[dict[str, str]] = {"halp": "agents.halp:HALPAgent"}
    smoke: ClassVar[dict[str, Any]] = {"variants": ["sensitivity", "taylor", "uniform"], "scan_ratios": [0.5],
                                       "confirm_steps": 3}

    name: Literal["halp"]
    variants: list[Annotated[str, Field(pattern=VARIANT_PATTERN)]] = Field(
        default_factory=lambda: ["sensitivity", "taylor", "uniform"], min_length=1, max_length=12,
        description="how each allocation values what it removes: sensitivity (accuracy drop of each group pruned "
                    "alone), taylor (first-order loss change, HALP's), magnitude, uniform (one ratio); kind^p raises "
                    "each term to the power p")
    scan_ratios: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75, 0.9], min_length=1, max_length=20,
        description="ratios each group is scanned at for the sensitivity variant")
    max_scan: int = Field(60, ge=1, le=10_000,
                          description="most scan evaluations: a network with more groups x scan ratios is scanned at "
                                      "fewer ratios (evenly spread, the largest kept), so wide nets scan cheaply")
    confirm_steps: int = Field(5, ge=1, le=30, description="device timings per variant to land it on the budget")
    short_steps: int = Field(0, ge=0, le=100_000, description="fine-tune steps before scoring a variant's plan")
    scan_steps: int = Field(0, ge=0, le=100_000, description="fine-tune steps before scoring each sensitivity scan "
                            "point: values each removal by what a fine-tune cannot recover (NetAdapt's short-term "
                            "fine-tune), at that many steps' cost per scan point")


StrategySpec = Annotated[
    BisectionStrategy | SensitivityStrategy | NetAdaptStrategy | AMCStrategy | OptunaStrategy | HALPStrategy,
    Field(discriminator="name"),
]
STRATEGY_MODELS: tuple[type[StrategyParams], ...] = typing.get_args(typing.get_args(StrategySpec)[0])


def strategy_models() -> dict[str, type[StrategyParams]]:
    """Strategy name -> its parameters model, read from each model's `name` literal."""
    return {name: model for model in STRATEGY_MODELS for name in model.agents}


def takes_warm_start(name: str) -> bool:
    """Whether a strategy's spec takes a `warm_start` plan (a scheduled run seeds it with the last best)."""
    model = strategy_models().get(name)
    return model is not None and "warm_start" in model.model_fields
