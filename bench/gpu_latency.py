"""The CUDA path, measured on a real GPU: what channel pruning buys there, and one search timed on it.

1. The meter on CUDA (CUDA events + synchronize, interleaved base/candidate pairs): base latency and
   the latency ratio of uniform plans at 0.3/0.5/0.7, against the MACs ratio, at batch 1 and 256,
   eager and TorchScript, for the zoo's CIFAR-size models. Latency does not depend on weight values,
   so these use random initialisation.
2. One search with its latency timed on the GPU: the committed ResNet-20 / Fashion-MNIST checkpoint,
   budget 0.6x measured latency at batch 256, global ranking (accuracy is scored on the CPU; only
   timing needs the target device).

CI has no GPU: run this where one is (`python bench/gpu_latency.py --data-root DIR`); it refuses to
run without CUDA rather than write CPU numbers under a GPU heading.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import environment, markdown_table, write
from measurement.latency import LatencyMeter, MeterSettings
from search_spaces.plan import ModelIdentity
from search_spaces.space import PruningSpace
from search_spaces.zoo import build_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = (("resnet20", 1, 28), ("resnet56", 3, 32), ("vgg16_bn", 3, 32), ("mobilenetv2", 3, 32))
RATIOS = (0.3, 0.5, 0.7)


def meter_rows(seconds: float, batches: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for arch, channels, size in MODELS:
        ident = ModelIdentity(arch=arch, num_classes=10, in_channels=channels, input_size=size)
        space = PruningSpace(build_model(ident).eval(), ident)
        plans = {r: space.apply(space.uniform(r)) for r in RATIOS}
        for batch in batches:
            for runtime in ("eager", "torchscript"):
                meter = LatencyMeter(MeterSettings(device="cuda:0", batch_size=batch, runtime=runtime,
                                                   max_seconds=seconds, ci_halfwidth=0.01))
                x = meter.example(channels, size)
                base_call = meter.prepare(space.base, x)
                base = meter.measure_call(base_call, 100)
                for r, model in plans.items():
                    stats = meter.compare_calls(meter.prepare(model, x), base_call)
                    rows.append({"model": arch, "batch": batch, "runtime": runtime, "ratio": r,
                                 "macs_ratio": space.cost(space.uniform(r))[0] / space.flops,
                                 "latency_ratio": stats.ratio, "ci": [stats.ci_low, stats.ci_high],
                                 "base_ms": base.median_ms, "base_spread_ms": [base.p10_ms, base.p90_ms],
                                 "pruned_ms": stats.candidate.median_ms, "pairs": stats.pairs})
                    print(rows[-1], flush=True)
    return rows


def search_row(data_root: Path, target: float, batch: int, runtime: str) -> dict[str, Any]:
    from agents.budget import BudgetUnreachableError
    from service.pipeline import run_job
    from service.spec import JobSpec

    spec = JobSpec.model_validate({
        "name": "resnet20-fmnist-gpu", "seed": 0,
        "model": {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "input_size": 28,
                  "weights": str(ROOT / "checkpoints/resnet20_fashion-mnist/model.safetensors")},
        "dataset": {"name": "fashion-mnist", "root": str(data_root), "val_size": 5000, "seed": 0},
        "device": {"name": "cuda:0", "batch_size": batch, "runtime": runtime},
        "round_to": 8,  # tensor-core friendly widths: odd widths can be slower than the base on a GPU
        "budget": {"metric": "latency_ms", "target": target, "relative": True},
        "strategy": {"name": "global", "steps": 10},
        "evaluation": {"val_limit": 2000},
        "finetune": {"final_epochs": 0},
        "execution": {"backend": "local"},
    })
    start = time.perf_counter()
    row: dict[str, Any] = {"model": "resnet20 (fashion-mnist checkpoint)", "device": "cuda:0", "batch": batch,
                           "runtime": runtime, "strategy": "global", "target": target}
    with tempfile.TemporaryDirectory() as out:
        try:
            report = run_job(spec, out).report
        except BudgetUnreachableError as exc:
            return {**row, "budget_met": "unreachable", "note": str(exc), "wall_s": time.perf_counter() - start}
    return {**row, "latency_ratio": report["ratios"]["latency"],
            "latency_ci": report["ratios"]["latency_ci"], "budget_met": report["budget_met"],
            "flops_ratio": report["ratios"]["flops"], "base_ms": report["base"]["latency"]["median_ms"],
            "pruned_ms": report["pruned"]["latency_ms"], "base_val": report["base"]["val_acc"],
            "pruned_val": report["pruned"]["val_acc"], "pruned_test": report["pruned"]["test_acc"],
            "evaluations": report["search"]["evaluations"], "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="time cap per A/B comparison")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--data-root", type=Path, help="Fashion-MNIST IDX folder; no search row without it")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.6, 0.8])
    parser.add_argument("--search-batch", type=int, default=1024)
    parser.add_argument("--search-runtime", default="torchscript")
    parser.add_argument("--skip-meter", action="store_true")
    parser.add_argument("--out-dir", type=Path, help="write here instead of bench/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_latency.py needs a CUDA device")
    torch.manual_seed(0)
    env = {**environment(), "gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    meter = [] if args.skip_meter else meter_rows(args.seconds, tuple(args.batches))
    search = [search_row(args.data_root, t, args.search_batch, args.search_runtime)
              for t in args.targets] if args.data_root else []
    for row in search:
        print(row, flush=True)
    md = [f"# CUDA latency ({env['gpu']}, torch {env['torch']}, CUDA {env['cuda']})", "",
          "Uniform channel plans, CUDA events, interleaved base/candidate pairs; ratio = pruned / base.", "",
          markdown_table(meter, ["model", "batch", "runtime", "ratio", "macs_ratio", "latency_ratio", "base_ms",
                                 "pruned_ms", "pairs"])]
    if search:
        md += ["", "## One search timed on the GPU", "",
               markdown_table(search, ["model", "batch", "runtime", "strategy", "target", "latency_ratio", "budget_met",
                                       "flops_ratio", "base_ms", "pruned_ms", "pruned_val", "pruned_test",
                                       "evaluations", "wall_s"])]
    data = {"environment": env, "meter": meter, "search": search}
    if args.out_dir:
        import bench.results_io as io

        io.RESULTS = args.out_dir
    write("gpu_latency", data, "\n".join(md))


if __name__ == "__main__":
    main()
