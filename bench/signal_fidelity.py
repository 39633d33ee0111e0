"""Does the score a search sees predict the accuracy after the final fine-tune? (EagleEye's question)

About 14 plans at one latency budget (ResNet-20 / Fashion-MNIST, CPU 1 thread, batch 32, eager, 0.55x
on the lookup table): HALP allocations of several sharpness and importance kinds, the uniform and
global plans, and random per-group perturbations of uniform, each bisected onto the same predicted
latency. For each plan, the search signals (validation accuracy on 1000 samples after BN
recalibration, then after N short fine-tune steps) and the final result (test accuracy after the
same distilled cosine fine-tune every quality row gets). The Kendall tau between each signal and the
final accuracy says which signal a search may trust. Resumable: plans already in the JSON are kept.

    python bench/signal_fidelity.py [--plans 14] [--final-epochs 0.5] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from scipy.stats import kendalltau, spearmanr

from agents.base import SearchContext
from agents.bisection import global_ranking
from agents.budget import Budget
from agents.halp import HALPAgent
from bench.results_io import RESULTS, environment, machine, markdown_table, write
from measurement.accuracy import accuracy
from measurement.latency import LatencyMeter, MeterSettings
from measurement.lut import LatencyTable
from measurement.training import Distillation, fit
from search_spaces.datasets import load_dataset
from search_spaces.plan import ModelIdentity
from search_spaces.space import PruningSpace
from search_spaces.weights import load_into, read_state_dict
from search_spaces.zoo import build_model
from service.config import Settings
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator, restore_accuracy

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints/resnet20_fashion-mnist/model.safetensors"
TARGET = 0.55
SHORT_STEPS = (0, 20, 50)
NAME = "signal_fidelity"


def setup(data_root: str) -> tuple[Any, PruningSpace, LatencyTable, Budget]:
    ident = ModelIdentity(arch="resnet20", num_classes=10, in_channels=1, input_size=28)
    data = load_dataset(argparse.Namespace(name="fashion-mnist", root=data_root, download=False, val_size=5000,
                                           train_size=None, test_size=None, seed=0),
                        input_size=28, in_channels=1, num_classes=10)
    model = build_model(ident)
    load_into(model, read_state_dict(str(CHECKPOINT)), str(CHECKPOINT))
    calib = list(data.train.batches(128, limit=4 * 128))
    space = PruningSpace(model.eval(), ident, criterion="l1", calibration=calib)
    meter = LatencyMeter(MeterSettings(batch_size=32, threads=1))
    lut = LatencyTable(space, meter, Settings().lut_cache_dir)
    lut.build()
    base_ms = meter.measure(model, meter.example(1, 28), repeats=30).median_ms
    lut.calibrate(base_ms)
    return data, space, lut, Budget("latency_ms", TARGET * base_ms, base_ms)


def on_budget(space: PruningSpace, lut: LatencyTable, knob: Any, top: float = 0.9) -> dict[str, float]:
    """The least-pruned point of a one-knob family that the table predicts at the target."""
    lo, hi = 0.0, top
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if lut.ratio(space.kept_for(knob(mid))) <= TARGET else (mid, hi)
    return knob(hi)


def plans(data: Any, space: PruningSpace, lut: LatencyTable, budget: Budget, n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"uniform": on_budget(space, lut, space.uniform),
                                        "global": on_budget(space, lut, global_ranking(space))}
    variants = ["sensitivity", "taylor^0", "taylor^0.5", "taylor", "taylor^2", "magnitude", "magnitude^2"]
    agent = HALPAgent(SearchContext(space, budget, 0, lut=lut), variants=variants, scan_ratios=(0.25, 0.5, 0.75, 0.9))
    meter = LatencyMeter(MeterSettings(batch_size=32, threads=1))
    scan = LocalEvaluator(space, data, budget, AccuracyRecipe(recalibration_batches=5, val_limit=1000), meter, lut)
    agent.observe(scan(agent.suggest()))  # the sensitivity scan: accuracy only, nothing timed
    for path in agent.paths:
        i = next((i for i, k in enumerate(path.plans) if lut.ratio(k) <= TARGET), None)
        if i is not None:  # a walk can end above the target: nothing it could still remove saves latency
            out[f"halp {path.name}"] = agent._ratios(path.plans[i])
    g = torch.Generator().manual_seed(0)
    k = 0
    while len(out) < n:
        k += 1
        noise = {d.name: math.exp(0.6 * float(torch.randn(1, generator=g))) for d in space.dimensions}

        def knob(u: float, noise: dict[str, float] = noise) -> dict[str, float]:
            return {d.name: min(d.max_ratio, u * noise[d.name]) for d in space.dimensions}

        out[f"random {k}"] = on_budget(space, lut, knob, top=0.9 / min(noise.values()))
    return out


def score(data: Any, space: PruningSpace, ratios: dict[str, float], final_epochs: float) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for steps in SHORT_STEPS:
        model = space.apply(ratios)
        recipe = AccuracyRecipe(recalibration_batches=5, short_steps=steps, lr=0.01, seed=0)
        restore_accuracy(model, data, recipe)
        row[f"val_{steps}"] = accuracy(model, data.val, 256, 1000)
    model = space.apply(ratios)
    restore_accuracy(model, data, AccuracyRecipe(recalibration_batches=5, seed=0))
    start = time.perf_counter()
    fit(model, data.train, "fashion-mnist", final_epochs, 0.01, 128, 0, schedule="cosine",
        distill=Distillation(copy.deepcopy(space.base)))
    row["final_seconds"] = round(time.perf_counter() - start, 1)
    row["test_acc_ft"] = accuracy(model, data.test)
    return row


def render(rows: list[dict[str, Any]], env: dict[str, Any], final_epochs: float) -> str:
    finals = [r["test_acc_ft"] for r in rows]
    taus = []
    for steps in SHORT_STEPS:
        sig = [r[f"val_{steps}"] for r in rows]
        tau, p = kendalltau(sig, finals)
        rho, _ = spearmanr(sig, finals)
        taus.append({"signal": f"val acc after BN recalibration + {steps} fine-tune steps", "plans": len(rows),
                     "kendall_tau": float(tau), "p_value": float(p), "spearman": float(rho)})
    lut_tau, _ = kendalltau([r["lut_ratio"] for r in rows], finals)
    parts = [f"# Search signal vs final accuracy — ResNet-20 / Fashion-MNIST at {TARGET}x latency (lookup table)",
             "", f"Machine: {machine(env)}; {env.get('note', '')}", "",
             f"Final: {final_epochs} epoch distilled (T=4, alpha=0.9) cosine fine-tune at lr 0.01, test split. "
             "Signals: validation accuracy (1000 samples) after BN recalibration (5 batches) and N SGD steps.", "",
             markdown_table(taus, ["signal", "plans", "kendall_tau", "p_value", "spearman"]), "",
             f"Kendall tau of the plans' predicted latency ratio vs final accuracy (all near {TARGET}): "
             f"{lut_tau:.3f}.", "", "## Plans", "",
             markdown_table(sorted(rows, key=lambda r: -r["test_acc_ft"]),
                            ["plan", "lut_ratio", "flops_ratio", *[f"val_{s}" for s in SHORT_STEPS], "test_acc_ft",
                             "final_seconds"])]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plans", type=int, default=14)
    parser.add_argument("--final-epochs", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/datasets/fashion-mnist"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / f"{NAME}.json"
    saved = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    rows: list[dict[str, Any]] = saved["rows"]
    env = {**environment(), "note": args.note}
    data, space, lut, budget = setup(args.data_root)
    done = {r["plan"] for r in rows}
    for name, ratios in plans(data, space, lut, budget, args.plans).items():
        if name in done:
            continue
        flops, _ = space.cost(ratios)
        row = {"plan": name, "ratios": ratios, "lut_ratio": lut.ratio(space.kept_for(ratios)),
               "flops_ratio": flops / space.flops, **score(data, space, ratios, args.final_epochs)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "ratios"}), flush=True)
        write(NAME, {"environment": env, "rows": rows}, render(rows, env, args.final_epochs))


if __name__ == "__main__":
    main()
