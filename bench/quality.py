"""The headline table: search quality at the same budget against the uniform and global baselines.

Committed Fashion-MNIST checkpoints (ResNet-20, vit_tiny). Suites: `main` (every strategy at 0.5x
measured latency (CPU, 1 thread, batch 32, eager) and 0.5x FLOPs, all with the L1 criterion, so
rows differ only in how ratios are allocated), `criteria` (criteria under one strategy), `depth`
(channels vs channels + blocks at 0.6x batch-1 latency), `sparse` (unstructured and 2:4 size
budgets) and `vit`. Every row gets the same final fine-tune (fixed steps) and its latency ratio is
re-measured on the returned model.

Rows are appended to bench/results/quality.json as they finish and skipped when already there,
so an interrupted run resumes where it stopped: `python bench/quality.py --suites main criteria
--seeds 0 1 2`.
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
BUDGETS: dict[str, dict[str, Any]] = {
    "latency 0.5x": {"metric": "latency_ms", "target": 0.5},
    "flops 0.5x": {"metric": "flops", "target": 0.5},
    "latency 0.6x b1": {"metric": "latency_ms", "target": 0.6, "batch_size": 1},
    "params 0.5x": {"metric": "params", "target": 0.5},  # non-zero parameters in fine-grained spaces
    "params 0.3x": {"metric": "params", "target": 0.3},
    "params 0.6x": {"metric": "params", "target": 0.6},
}
CHECKPOINTS = ROOT / "checkpoints"
MODELS: dict[str, dict[str, Any]] = {
    "resnet20": {"arch": "resnet20", "weights": CHECKPOINTS / "resnet20_fashion-mnist/model.safetensors",
                 "base_lr": 0.1},
    "vit_tiny": {"arch": "vit_tiny", "weights": CHECKPOINTS / "vit_tiny_fashion-mnist/model.safetensors",
                 "base_lr": 0.05},
}
SPACES: dict[str, dict[str, Any]] = {  # name -> model and the kinds of dimension searched
    "resnet20": {"model": "resnet20", "dimensions": ["channel"]},
    "resnet20+depth": {"model": "resnet20", "dimensions": ["channel", "block"]},
    "resnet20 unstructured": {"model": "resnet20", "dimensions": ["unstructured"]},
    "resnet20 2:4": {"model": "resnet20", "dimensions": ["nm"]},
    "vit_tiny": {"model": "vit_tiny", "dimensions": ["channel"]},
}
CRITERIA = ("l1", "bn_scale", "taylor", "fpgm")
Row = tuple[str, str, str, str]  # strategy, budget, criterion, space
SUITES: dict[str, list[Row]] = {
    # the headline table: every strategy, one criterion, two budgets
    "main": [(s, b, "l1", "resnet20") for b in ("latency 0.5x", "flops 0.5x") for s in STRATEGIES],
    # criteria under the strategy that wins the main table at 0.5x FLOPs
    "criteria": [("amc", "flops 0.5x", c, "resnet20") for c in CRITERIA],
    # batch-1 CPU latency is per-operator overhead: can removing whole blocks buy what channels cannot?
    "depth": [("uniform", "latency 0.6x b1", "l1", "resnet20")]
    + [(s, "latency 0.6x b1", "l1", sp) for sp in ("resnet20", "resnet20+depth") for s in ("sensitivity", "optuna")],
    # size budgets: per-layer fine-grained sparsity plans vs one uniform sparsity, magnitude vs Wanda
    "sparse": [(s, b, c, "resnet20 unstructured") for s in ("uniform", "sensitivity")
               for b in ("params 0.5x", "params 0.3x") for c in ("l1", "wanda")]
    + [("optuna", b, c, "resnet20 unstructured") for c in ("l1", "wanda") for b in ("params 0.3x", "params 0.5x")]
    + [(s, "params 0.6x", "l1", "resnet20 2:4") for s in ("uniform", "sensitivity")],
    # attention heads, MLP width and embedding width of a small ViT
    "vit": [(s, "flops 0.5x", "l1", "vit_tiny") for s in ("uniform", "global", "amc")],
}
FINETUNE_EPOCHS = 0.35  # ~150 SGD steps at batch 128: the same short fine-tune for every row


def job(strategy: str, budget: dict[str, Any], seed: int, criterion: str, space: str, data_root: str) -> JobSpec:
    model = MODELS[SPACES[space]["model"]]
    budget = dict(budget)
    batch_size = budget.pop("batch_size", 32)
    return parse_spec({
        "name": f"quality-{strategy}-{budget['metric']}{budget['target']}-b{batch_size}-{criterion}-"
                f"{space.replace(' ', '_')}-{seed}",
        "model": {"arch": model["arch"], "num_classes": 10, "in_channels": 1, "input_size": 28,
                  "weights": str(model["weights"])},
        "dataset": {"name": "fashion-mnist", "root": data_root, "val_size": 5000, "seed": 0},
        "device": {"name": "cpu", "threads": 1, "batch_size": batch_size, "runtime": "eager"},
        "budget": budget,
        "strategy": {"name": strategy, **STRATEGIES[strategy]},
        "criterion": criterion,
        "dimensions": SPACES[space]["dimensions"],
        "evaluation": {"val_limit": 1000, "recalibration_batches": 5},
        "measurement": {"max_seconds": 10},
        "finetune": {"final_epochs": FINETUNE_EPOCHS, "base_lr": model["base_lr"]},
        "seed": seed,
    })


def row(spec: JobSpec, budget_name: str, space: str, report: dict[str, Any], wall: float) -> dict[str, Any]:
    base, pruned, ratios = report["base"], report["pruned"], report["ratios"]
    sizes = report.get("size_bytes", {})
    return {
        "strategy": spec.strategy.name, "budget": budget_name, "budget_metric": spec.budget.metric,
        "budget_target": spec.budget.target, "seed": spec.seed, "criterion": spec.criterion, "space": space,
        "val_acc": pruned["val_acc"], "test_acc": pruned["test_acc"], "test_acc_ft": pruned.get("test_acc_ft"),
        "base_test_acc": base["test_acc"], "latency_ratio": ratios["latency"], "latency_ci": ratios["latency_ci"],
        "flops_ratio": ratios["flops"], "params_ratio": ratios["params"], "budget_met": report["budget_met"],
        "search_seconds": report["search"]["seconds"], "evaluations": report["search"]["evaluations"],
        "sparse_kb": sizes["model.sparse.safetensors"] / 1024 if "model.sparse.safetensors" in sizes else None,
        "dense_kb": sizes["model.safetensors"] / 1024 if "model.safetensors" in sizes else None,
        "job_seconds": round(wall, 1), "cpu": environment()["cpu"],
    }


def load_rows() -> list[dict[str, Any]]:
    path = RESULTS / "quality.json"
    return json.loads(path.read_text()) if path.is_file() else []


def render(rows: list[dict[str, Any]]) -> str:
    def summarise(group: list[dict[str, Any]]) -> dict[str, Any]:
        out = dict(group[0])
        for key in ("val_acc", "test_acc", "test_acc_ft", "latency_ratio", "flops_ratio", "params_ratio",
                    "sparse_kb", "search_seconds", "evaluations"):
            vals = [r[key] for r in group if r.get(key) is not None]
            if not vals:
                continue
            mean = statistics.fmean(vals)
            spread = (max(vals) - min(vals)) / 2 if len(vals) > 1 else None
            fmt = ".0f" if key in ("search_seconds", "evaluations", "sparse_kb") else ".3f"
            out[key] = f"{mean:{fmt}}" + (f" ± {spread:{fmt}}" if spread else "")
        out["seeds"] = len(group)
        out["budget_met"] = f"{sum(bool(r['budget_met']) for r in group)}/{len(group)}"
        return out

    def table(selected: list[Row], by: tuple[str, ...], extra: tuple[str, ...] = ()) -> str:
        wanted = set(selected)
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in rows:
            if (r["strategy"], r["budget"], r["criterion"], r.get("space", "resnet20")) in wanted:
                groups.setdefault(tuple(str(r.get(k, "resnet20")) for k in by), []).append(r)
        cols = [*by, "seeds", "val_acc", "test_acc", "test_acc_ft", "latency_ratio", "budget_met",
                "flops_ratio", "params_ratio", *extra, "search_seconds", "evaluations"]
        return markdown_table([summarise(g) for _, g in sorted(groups.items())], cols)

    cpus = sorted({r.get("cpu", "?") for r in rows})  # each row names the machine it ran on
    parts = [f"# Search quality — Fashion-MNIST (2-core VMs: {', '.join(cpus)})", "",
             "Accuracy: validation (1000 samples during search, all 5000 here) and test before fine-tune, test "
             f"after the same {FINETUNE_EPOCHS} epoch fine-tune; latency ratio re-measured on the returned model "
             "(CPU, 1 thread, eager, batch 32 unless the budget says b1); mean ± half-range over seeds.", "",
             "## All strategies, L1 criterion (ResNet-20)", "",
             table(SUITES["main"], ("budget", "strategy")),
             "", "## Criteria under AMC (ResNet-20, FLOPs 0.5x)", "",
             table(SUITES["criteria"], ("budget", "criterion")),
             "", "## Channels vs channels + depth at 0.6x batch-1 latency (ResNet-20)", "",
             table(SUITES["depth"], ("budget", "space", "strategy")),
             "", "## Fine-grained sparsity: size budgets (non-zero parameters; ResNet-20)", "",
             "sparse_kb: the saved sparse file (values + bitmask); the dense file is "
             f"{next((r['dense_kb'] for r in rows if r.get('sparse_kb')), 0):.0f} KB. 2:4 masks run at dense speed on "
             "this CPU: size and accuracy only.", "",
             table(SUITES["sparse"], ("budget", "space", "criterion", "strategy"), ("sparse_kb",)),
             "", "## Vision transformer (vit_tiny: heads, MLP width, embedding width)", "",
             table(SUITES["vit"], ("budget", "space", "strategy"))]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suites", nargs="*", default=["main"], choices=list(SUITES))
    parser.add_argument("--only", nargs="*", default=list(STRATEGIES), help="restrict to these strategies")
    parser.add_argument("--budgets", nargs="*", default=list(BUDGETS), help="restrict to these budgets")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/datasets/fashion-mnist"))
    parser.add_argument("--runs", default="/tmp/prunesearch-quality")
    args = parser.parse_args()
    rows = load_rows()
    done = {(r["strategy"], r["budget"], r["seed"], r["criterion"], r.get("space", "resnet20")) for r in rows}
    todo = [(s, b, seed, c, sp) for suite in args.suites for (s, b, c, sp) in SUITES[suite] for seed in args.seeds
            if s in args.only and b in args.budgets]
    for strategy, budget_name, seed, criterion, space in todo:
        if (strategy, budget_name, seed, criterion, space) in done:
            continue
        spec = job(strategy, BUDGETS[budget_name], seed, criterion, space, args.data_root)
        start = time.perf_counter()
        report = run_job(spec, Path(args.runs) / str(spec.name)).report
        rows.append(row(spec, budget_name, space, report, time.perf_counter() - start))
        done.add((strategy, budget_name, seed, criterion, space))
        print(json.dumps(rows[-1]), flush=True)
        write("quality", rows, render(rows))  # after every row: an interrupted run keeps what it finished
    write("quality", rows, render(rows))


if __name__ == "__main__":
    main()
