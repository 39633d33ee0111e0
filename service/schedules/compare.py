"""Compare a finished scheduled run with the previous successful run of the same schedule.

Inputs are the jobs' stored result summaries (base/pruned accuracy and latency, budget_met) and
their chosen plans (group -> ratio, from plan.json). Accuracy is test accuracy (after the final
fine-tune when the job ran one); latency is the measured median in ms.

Thresholds: `accuracy_drop` (absolute, 0.01 = one point), `latency_rise` (relative, 0.10 = +10 %),
`budget_miss` (flag a run whose returned model misses its budget). Any flag marks a regression.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_THRESHOLDS: dict[str, Any] = {"accuracy_drop": 0.01, "latency_rise": 0.10, "budget_miss": True}
PLAN_TOLERANCE = 1e-6


def metrics_of(result: Mapping[str, Any]) -> dict[str, float | bool | None]:
    """The compared figures of one job result (None where the result lacks one)."""
    base, pruned = result.get("base") or {}, result.get("pruned") or {}
    base_latency = (base.get("latency") or {}).get("median_ms")
    return {
        "base_accuracy": base.get("test_acc"),
        "base_latency_ms": base_latency,
        "pruned_accuracy": pruned.get("test_acc_ft", pruned.get("test_acc")),
        "pruned_latency_ms": pruned.get("latency_ms"),
        "latency_ratio": (result.get("ratios") or {}).get("latency"),
        "budget_met": result.get("budget_met"),
    }


def _delta(previous: Any, current: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"previous": previous, "current": current, "delta": None}
    if isinstance(previous, (int, float)) and isinstance(current, (int, float)):
        out["delta"] = current - previous
        if previous:
            out["relative"] = current / previous - 1
    return out


def plan_changes(previous: Mapping[str, float] | None, current: Mapping[str, float] | None) -> dict[str, Any]:
    if previous is None or current is None:
        return {"known": False, "changed": None, "groups": {}}
    groups = {name: {"previous": previous.get(name), "current": current.get(name)}
              for name in sorted(set(previous) | set(current))
              if name not in previous or name not in current
              or abs(previous[name] - current[name]) > PLAN_TOLERANCE}
    return {"known": True, "changed": bool(groups), "groups": groups}


def compare(current: Mapping[str, Any], previous: Mapping[str, Any] | None, thresholds: Mapping[str, Any],
            current_plan: Mapping[str, float] | None = None, previous_plan: Mapping[str, float] | None = None,
            ) -> tuple[dict[str, Any], list[str]]:
    """(comparison, flags). Without a previous result only the current figures and the budget are checked."""
    limits = {**DEFAULT_THRESHOLDS, **thresholds}
    cur = metrics_of(current)
    flags: list[str] = []
    if limits["budget_miss"] and cur["budget_met"] is False:
        flags.append("budget_miss")
    if previous is None:
        return {"previous": None, "current": cur, "plan": {"current": dict(current_plan or {})}}, flags
    prev = metrics_of(previous)
    comparison: dict[str, Any] = {
        "base": {"accuracy": _delta(prev["base_accuracy"], cur["base_accuracy"]),
                 "latency_ms": _delta(prev["base_latency_ms"], cur["base_latency_ms"])},
        "pruned": {"accuracy": _delta(prev["pruned_accuracy"], cur["pruned_accuracy"]),
                   "latency_ms": _delta(prev["pruned_latency_ms"], cur["pruned_latency_ms"]),
                   "latency_ratio": _delta(prev["latency_ratio"], cur["latency_ratio"])},
        "budget_met": {"previous": prev["budget_met"], "current": cur["budget_met"]},
        "plan": {"current": dict(current_plan or {}), **plan_changes(previous_plan, current_plan)},
        "thresholds": limits,
    }
    for part in ("base", "pruned"):
        acc = comparison[part]["accuracy"]["delta"]
        if acc is not None and -acc > limits["accuracy_drop"]:
            flags.append(f"{part}_accuracy_drop")
        rise = comparison[part]["latency_ms"].get("relative")
        if rise is not None and rise > limits["latency_rise"]:
            flags.append(f"{part}_latency_rise")
    return comparison, flags
