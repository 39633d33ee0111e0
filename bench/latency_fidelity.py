"""How far can latency be trusted? FLOPs vs measured latency, runtimes, lookup table error, noise.

ResNet-20 at 28x28 (Fashion-MNIST shape), uniform plans at 0.3/0.5/0.7:
  1. FLOPs ratio vs measured latency ratio at batch 1 and 32, 1 and 2 threads, eager / TorchScript / ONNX Runtime;
  2. lookup-table prediction error against end-to-end measurement (uniform and random per-group plans);
  3. CV of repeated measurements: unpinned vs pinned, absolute medians vs interleaved ratios;
  4. the confidence-interval half-width the meter reaches in 10, 30 and 60 seconds.
Latency does not depend on weight values, so the committed checkpoint is used when present and a
random initialisation otherwise (recorded). Run on an otherwise idle machine: `make bench`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import environment, machine, markdown_table, write
from measurement.latency import LatencyMeter, MeterSettings
from measurement.lut import LatencyTable
from search_spaces.plan import ModelIdentity
from search_spaces.space import PruningSpace
from search_spaces.weights import load_into, read_state_dict
from search_spaces.zoo import build_model

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints/resnet20_fashion-mnist/model.safetensors"
RATIOS = (0.3, 0.5, 0.7)


def base_space() -> tuple[PruningSpace, str]:
    ident = ModelIdentity(arch="resnet20", num_classes=10, in_channels=1, input_size=28)
    model = build_model(ident)
    source = "random init"
    if CHECKPOINT.is_file():
        load_into(model, read_state_dict(CHECKPOINT), str(CHECKPOINT))
        source = str(CHECKPOINT.relative_to(CHECKPOINT.parents[2]))
    return PruningSpace(model.eval(), ident), source


def fidelity_rows(space: PruningSpace, seconds: float) -> list[dict[str, Any]]:
    rows = []
    plans = {r: space.apply(space.uniform(r)) for r in RATIOS}
    for batch in (1, 32):
        for threads in (1, 2):
            for runtime in ("eager", "torchscript", "onnxruntime"):
                meter = LatencyMeter(MeterSettings(batch_size=batch, threads=threads, runtime=runtime,
                                                   max_seconds=seconds, ci_halfwidth=0.01))
                x = meter.example(1, 28)
                base_call = meter.prepare(space.base, x)
                for r, model in plans.items():
                    stats = meter.compare_calls(meter.prepare(model, x), base_call)
                    flops = space.cost(space.uniform(r))[0] / space.flops
                    rows.append({"ratio": r, "batch": batch, "threads": threads, "runtime": runtime,
                                 "flops_ratio": flops, "latency_ratio": stats.ratio,
                                 "ci": [stats.ci_low, stats.ci_high], "base_ms": stats.base.median_ms,
                                 "pruned_ms": stats.candidate.median_ms, "pairs": stats.pairs,
                                 "converged": stats.converged})
                    print(rows[-1], flush=True)
    return rows


def lut_rows(space: PruningSpace, seconds: float, cache: Path) -> list[dict[str, Any]]:
    rows = []
    rng = random.Random(0)
    plans = {f"uniform {r}": space.uniform(r) for r in RATIOS}
    for i in range(4):
        plans[f"random #{i + 1}"] = {d.name: rng.uniform(0, 0.8) for d in space.dimensions}
    for batch in (1, 32):
        meter = LatencyMeter(MeterSettings(batch_size=batch, threads=1, max_seconds=seconds, ci_halfwidth=0.01))
        table = LatencyTable(space, meter, cache)
        start = time.perf_counter()
        timed = table.build()
        build_s = time.perf_counter() - start
        x = meter.example(1, 28)
        base_ms = meter.measure(space.base, x, repeats=60).median_ms
        table.calibrate(base_ms)
        base_call = meter.prepare(space.base, x)
        for name, ratios in plans.items():
            stats = meter.compare_calls(meter.prepare(space.apply(ratios), x), base_call)
            measured = stats.ratio * base_ms
            predicted = table.predict(space.kept_for(ratios))
            rows.append({"batch": batch, "plan": name, "predicted_ms": predicted, "measured_ms": measured,
                         "error": predicted / measured - 1, "lut_points_timed": timed, "lut_build_s": build_s})
            print(rows[-1], flush=True)
    return rows


def noise_rows(space: PruningSpace, repeats: int) -> list[dict[str, Any]]:
    """CV across `repeats` independent measurements (each the median of 30 runs, or 30 interleaved pairs)."""
    rows = []
    pruned = space.apply(space.uniform(0.5))
    for batch in (1, 32):
        for pin in (False, True):
            settings = MeterSettings(batch_size=batch, threads=1, pin_cores=pin, repeats=30, max_seconds=0.0,
                                     ci_halfwidth=1e-9)
            meter = LatencyMeter(settings)
            x = meter.example(1, 28)
            base_call, cand_call = meter.prepare(space.base, x), meter.prepare(pruned, x)
            medians = [meter.measure_call(base_call, 30).median_ms for _ in range(repeats)]
            ratios = [meter.compare_calls(cand_call, base_call).ratio for _ in range(repeats)]
            rows.append({"batch": batch, "pinned": pin,
                         "cv_absolute_median": statistics.stdev(medians) / statistics.fmean(medians),
                         "cv_interleaved_ratio": statistics.stdev(ratios) / statistics.fmean(ratios),
                         "repeats": repeats})
            print(rows[-1], flush=True)
    return rows


def ci_rows(space: PruningSpace, budgets: tuple[float, ...]) -> list[dict[str, Any]]:
    rows = []
    pruned = space.apply(space.uniform(0.5))
    for batch in (1, 32):
        base_settings = MeterSettings(batch_size=batch, threads=1, ci_halfwidth=1e-9)
        for seconds in budgets:
            meter = LatencyMeter(replace(base_settings, max_seconds=seconds))
            x = meter.example(1, 28)
            stats = meter.compare(pruned, space.base, x)
            rows.append({"batch": batch, "seconds": seconds, "halfwidth": stats.halfwidth, "pairs": stats.pairs,
                         "ratio": stats.ratio})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="time cap per A/B comparison")
    parser.add_argument("--noise-repeats", type=int, default=5)
    parser.add_argument("--ci-budgets", type=float, nargs="+", default=[10, 30, 60])
    parser.add_argument("--lut-cache", default=str(Path.home() / ".cache/prunesearch/lut"))
    args = parser.parse_args()
    torch.manual_seed(0)
    space, source = base_space()
    data: dict[str, Any] = {"environment": environment(), "model": "resnet20 28x28x1", "weights": source,
            "fidelity": fidelity_rows(space, args.seconds),
            "lookup_table": lut_rows(space, args.seconds, Path(args.lut_cache)),
            "noise": noise_rows(space, args.noise_repeats),
            "ci_vs_time": ci_rows(space, tuple(args.ci_budgets))}
    fid = [{**r, "ci": f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"} for r in data["fidelity"]]
    md = [f"# Latency fidelity — ResNet-20 at 28×28 ({machine(data['environment'])})", "",
          "Uniform channel plans; latency ratio = pruned / base, interleaved A/B pairs, median with 95% CI.", "",
          markdown_table(fid, ["ratio", "batch", "threads", "runtime", "flops_ratio", "latency_ratio", "ci",
                               "base_ms", "pairs"], {"base_ms": ".2f"}), "",
          "## Lookup-table prediction (1 thread, eager)", "",
          markdown_table(data["lookup_table"], ["batch", "plan", "predicted_ms", "measured_ms", "error"],
                         {"error": "+.1%", "predicted_ms": ".2f", "measured_ms": ".2f"}), "",
          "## Measurement noise (CV across repeated measurements)", "",
          markdown_table(data["noise"], ["batch", "pinned", "cv_absolute_median", "cv_interleaved_ratio", "repeats"],
                         {"cv_absolute_median": ".1%", "cv_interleaved_ratio": ".1%"}), "",
          "## CI half-width the meter reaches in a time budget (uniform 0.5 vs base)", "",
          markdown_table(data["ci_vs_time"], ["batch", "seconds", "halfwidth", "pairs", "ratio"],
                         {"halfwidth": ".2%", "seconds": ".0f"})]
    write("latency_fidelity", data, "\n".join(md))


if __name__ == "__main__":
    main()
