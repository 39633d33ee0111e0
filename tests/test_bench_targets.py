"""The issue's targets as `bench/quality.py` recomputes them from a results file: the numbers a reader of
quality.md checks the claim "searched beats uniform and global" against, so they must mean what they say."""

from __future__ import annotations

from typing import Any

import pytest

from bench.quality import latency_targets


def row(strategy: str, seed: int, test_acc: float, test_acc_ft: float, ratio: float = 0.53, **extra: Any
        ) -> dict[str, Any]:
    return {"arch": "mobilenetv2", "batch_size": 32, "budget_metric": "latency_ms", "budget_target": 0.55,
            "finetune": "0.5 epoch distilled", "strategy": strategy, "space": "mobilenetv2", "seed": seed,
            "test_acc": test_acc, "test_acc_ft": test_acc_ft, "latency_ratio": ratio, "search_seconds": 60.0,
            "teacher_test_acc": 0.912, "cpu": "AMD EPYC", "source": "search", **extra}


def test_the_best_searched_strategy_is_judged_against_the_better_baseline_on_seed_means() -> None:
    rows = [row("uniform", s, 0.60, 0.902) for s in (0, 1)] + [row("global", s, 0.75, 0.904) for s in (0, 1)]
    rows += [row("halp", 0, 0.86, 0.910), row("halp", 1, 0.84, 0.908)]
    (cell,) = latency_targets(rows)
    assert cell["best searched"] == "halp/mobilenetv2" and cell["own plans"] == "2 of 2"
    assert cell["gain before FT"] == pytest.approx(0.85 - 0.75)  # against global, the better one before too
    assert cell["gain after FT"] == pytest.approx(0.909 - 0.904)
    assert cell["room after FT"] == pytest.approx(0.912 - 0.904)
    assert cell["met"] == "yes" and cell["budgets held"] == "yes"


def test_a_searched_job_that_returned_a_baseline_counts_with_that_baseline_s_accuracy() -> None:
    """The plan the user got: left out of the means, such a seed would turn a miss into a win."""
    rows = [row("uniform", s, 0.60, 0.902) for s in (0, 1)] + [row("global", s, 0.75, 0.904) for s in (0, 1)]
    rows += [row("halp", 0, 0.86, 0.912), row("halp", 1, 0.75, 0.904, source="baseline:global")]
    (cell,) = latency_targets(rows)
    assert cell["own plans"] == "1 of 2"
    assert cell["gain after FT"] == pytest.approx(0.908 - 0.904) and cell["met"] == "NO"


def test_a_plan_over_its_budget_or_far_under_it_does_not_hold() -> None:
    over = [row("uniform", 0, 0.60, 0.902), row("halp", 0, 0.86, 0.915, ratio=0.55 * 1.04)]
    assert latency_targets(over)[0]["budgets held"] == "NO"
    under = [row("uniform", 0, 0.60, 0.902), row("halp", 0, 0.86, 0.915, ratio=0.55 * 0.85)]
    assert latency_targets(under)[0]["budgets held"] == "NO"
