"""A resource budget resolved against the base model, and the one rule that says whether it is met."""

from __future__ import annotations

from dataclasses import dataclass


class BudgetUnreachableError(ValueError):
    """Even the most-pruned plan the space allows does not meet the budget."""


@dataclass(frozen=True)
class Budget:
    metric: str  # latency_ms | flops | params
    limit: float  # in the metric's unit (ms, MACs, parameters)
    base: float  # the base model's value in the same unit
    tolerance: float = 0.03

    @property
    def target_ratio(self) -> float:
        return self.limit / self.base

    @property
    def measured(self) -> bool:
        return self.metric == "latency_ms"

    def met(self, flops: int, params: int, latency_ci_high: float | None = None,
            latency_ratio: float | None = None) -> bool:
        """FLOPs and params are exact. A measured latency ratio is met when its median is at most the
        target and the upper end of its confidence interval within the tolerance of it: the tolerance
        absorbs measurement noise, never a plan that is over the target (a plan accepted at the very
        edge of the tolerance re-measured 1-2% above it)."""
        if self.metric == "flops":
            return flops <= self.limit
        if self.metric == "params":
            return params <= self.limit
        if latency_ci_high is None:
            return False
        within = latency_ci_high <= self.target_ratio * (1 + self.tolerance)
        return within and (latency_ratio is None or latency_ratio <= self.target_ratio)

    def verdict(self, flops: int, params: int, latency_ci_high: float | None = None,
                latency_ratio: float | None = None) -> str:
        """`met` (the rule above), `within_tolerance` (the median is over the target by less than the
        tolerance: noise can explain it, but the user is told), or `missed`."""
        if self.met(flops, params, latency_ci_high, latency_ratio):
            return "met"
        if self.measured and latency_ratio is not None and latency_ratio <= self.target_ratio * (1 + self.tolerance):
            return "within_tolerance"
        return "missed"

    def describe(self) -> dict[str, float | str]:
        return {"metric": self.metric, "limit": self.limit, "base": self.base,
                "target_ratio": self.target_ratio, "tolerance": self.tolerance}
