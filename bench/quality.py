"""The headline table: search quality at the same budget against the uniform and global baselines.

ResNet-20 / Fashion-MNIST (the committed checkpoint). Budgets: 0.5x measured latency (CPU,
1 thread, batch 32, eager) and 0.5x FLOPs. Every strategy uses the same criterion (L1) in the
main table, so rows differ only in how ratios are allocated; a second table compares criteria
under one strategy. Every row gets the same final fine-tune (fixed steps) and its latency ratio
is re-measured on the returned model.

Rows are appended to bench/results/quality.json as they finish and skipped when already there,
so an interrupted run resumes where it stopped. `--only` restricts to some strategies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import RESULTS, environment, markdown_table, write
from service.pipeline import run_job
from service.spec import JobSpec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES: dict[str, dict[str, Any]] = {
    "uniform": {"steps": 10},
    "global": {"steps": 10},
    "sensitivity": {"ratios": [0.1, 0.3, 0.5, 0.7, 0.9]},
    "netadapt": {"initial_fraction": 0.1, "decay": 0.96, "short_steps": 10},
    "amc": {"episodes": 100, "warmup_episodes": 20},
    "optuna": {"trials": 50, "parallel": 2},
}
BUDGETS = {"latency 0.5x": {"metric": "latency_ms", "target": 0.5}, "flops 0.5x": {"metric": "flops", "target": 0.5}}
CRITERIA = ("l1", "bn_scale", "taylor", "fpgm")
FINETUNE_EPOCHS = 0.35  # ~150 SGD steps at batch 128: the same short fine-tune for every row


def job(strategy: str, budget: dict[str, Any], seed: int, criterion: str, data_root: str) -> JobSpec:
    return parse_spec({
        "name": f"quality-{strategy}-{budget['metric']}-{criterion}-{seed}",
        "model": {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "input_size": 28,
                  "weights": str(ROOT / "checkpoints/resnet20_fashion-mnist/model.safetensors")},
        "dataset": {"name": "fashion-mnist", "root": data_root, "val_size": 5000, "seed": 0},
        "device": {"name": "cpu", "threads": 1, "batch_size": 32, "runtime": "eager"},
        "budget": budget,
        "strategy": {"name": strategy, **STRATEGIES[strategy]},
        "criterion": criterion,
        "evaluation": {"val_limit": 1000, "recalibration_batches": 5},
        "measurement": {"max_seconds": 10},
        "finetune": {"final_epochs": FINETUNE_EPOCHS, "base_lr": 0.1},
        "seed": seed,
    })


def row(spec: JobSpec, budget_name: str, report: dict[str, Any], wall: float) -> dict[str, Any]:
    base, pruned, ratios = report["base"], report["pruned"], report["ratios"]
    return {
        "strategy": spec.strategy.name, "budget": budget_name, "budget_metric": spec.budget.metric,
        "budget_target": spec.budget.target, "seed": spec.seed, "criterion": spec.criterion,
        "val_acc": pruned["val_acc"], "test_acc": pruned["test_acc"], "test_acc_ft": pruned.get("test_acc_ft"),
        "base_test_acc": base["test_acc"], "latency_ratio": ratios["latency"], "latency_ci": ratios["latency_ci"],
        "flops_ratio": ratios["flops"], "params_ratio": ratios["params"], "budget_met": report["budget_met"],
        "search_seconds": report["search"]["seconds"], "evaluations": report["search"]["evaluations"],
        "job_seconds": round(wall, 1),
    }


def load_rows() -> list[dict[str, Any]]:
    path = RESULTS / "quality.json"
    return json.loads(path.read_text()) if path.is_file() else []


def render(rows: list[dict[str, Any]]) -> str:
    def summarise(group: list[dict[str, Any]]) -> dict[str, Any]:
        out = dict(group[0])
        for key in ("val_acc", "test_acc", "test_acc_ft", "latency_ratio", "flops_ratio", "params_ratio",
                    "search_seconds", "evaluations"):
            vals = [r[key] for r in group if r.get(key) is not None]
            if not vals:
                continue
            mean = statistics.fmean(vals)
            spread = (max(vals) - min(vals)) / 2 if len(vals) > 1 else None
            fmt = ".0f" if key in ("search_seconds", "evaluations") else ".3f"
            out[key] = f"{mean:{fmt}}" + (f" ± {spread:{fmt}}" if spread else "")
        out["seeds"] = len(group)
        out["budget_met"] = f"{sum(bool(r['budget_met']) for r in group)}/{len(group)}"
        return out

    def table(selected: list[dict[str, Any]], by: str) -> str:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in selected:
            groups.setdefault((r["budget"], r[by]), []).append(r)
        cols = ["budget", by, "seeds", "val_acc", "test_acc", "test_acc_ft", "latency_ratio", "budget_met",
                "flops_ratio", "params_ratio", "search_seconds", "evaluations"]
        return markdown_table([summarise(g) for _, g in sorted(groups.items())], cols)

    main = [r for r in rows if r["criterion"] == "l1"]
    criteria = [r for r in rows if r["budget"] == "flops 0.5x" and r.get("criteria_table")]
    env = environment()
    parts = [f"# Search quality — ResNet-20 / Fashion-MNIST ({env['cpu']}, {env['cores']} cores)", "",
             "Accuracy: validation (1000 samples during search, all 5000 here) and test before fine-tune, test "
             f"after the same {FINETUNE_EPOCHS} epoch fine-tune; latency ratio re-measured on the returned model "
             "(CPU, 1 thread, batch 32, eager); mean ± half-range over seeds.", "",
             "## All strategies, L1 criterion", "", table(main, "strategy")]
    if criteria:
        parts += ["", "## Criteria under one strategy (FLOPs 0.5x)", "", table(criteria, "criterion")]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=list(STRATEGIES))
    parser.add_argument("--budgets", nargs="*", default=list(BUDGETS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--criteria-strategy", default=None, help="also run the criteria table with this strategy")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/datasets/fashion-mnist"))
    parser.add_argument("--runs", default="/tmp/prunesearch-quality")
    args = parser.parse_args()
    rows = load_rows()
    done = {(r["strategy"], r["budget"], r["seed"], r["criterion"]) for r in rows}
    todo = [(s, b, seed, "l1") for b in args.budgets for s in args.only for seed in args.seeds]
    if args.criteria_strategy:
        todo += [(args.criteria_strategy, "flops 0.5x", seed, c) for c in CRITERIA for seed in args.seeds]
    for strategy, budget_name, seed, criterion in todo:
        if (strategy, budget_name, seed, criterion) in done:
            continue
        spec = job(strategy, BUDGETS[budget_name], seed, criterion, args.data_root)
        start = time.perf_counter()
        report = run_job(spec, Path(args.runs) / str(spec.name)).report
        r = row(spec, budget_name, report, time.perf_counter() - start)
        r["criteria_table"] = criterion != "l1" or strategy == args.criteria_strategy
        rows.append(r)
        done.add((strategy, budget_name, seed, criterion))
        print(json.dumps(r), flush=True)
        write("quality", rows, render(rows))  # after every row: an interrupted run keeps what it finished
    write("quality", rows, render(rows))


if __name__ == "__main__":
    main()
