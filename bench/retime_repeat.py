"""How far apart are two timings of the same plan? In one process, and in fresh processes.

A job's baselines and contenders are timed in its search process and re-timed in a fresh one
(`measurement.retime`), and the two need not agree: one cached uniform plan (ResNet-20, batch 32) timed
0.394x in one job and 0.442x in the next. Here the same plans are timed K times each way, in rounds
(every plan once per round, fresh then in-process), so drift over the run touches every plan alike:
  * in-process: `LatencyMeter.compare` repeated in this process, which has built and timed everything;
  * fresh: `measurement.retime.retime_files`, a new interpreter per timing, as a job's final re-timing.
Reported per plan: median, min and max ratio and the spread (max - min) / median. Plans: uniform 0.3
and 0.5 and one seeded random per-group plan. Run on an otherwise idle machine:

    python bench/retime_repeat.py [--archs resnet20] [--batches 1 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.plan_latency import space_for
from bench.results_io import environment, machine, markdown_table, write
from measurement.latency import LatencyMeter, MeterSettings
from measurement.retime import retime_files
from search_spaces.space import PruningSpace
from service.pipeline import artifact_files

MODES = ("fresh", "in-process")


def plans(space: PruningSpace, seed: int = 0) -> dict[str, dict[str, float]]:
    rng = random.Random(seed)
    return {"uniform 0.3": space.uniform(0.3), "uniform 0.5": space.uniform(0.5),
            "random": {d.name: min(d.max_ratio, rng.uniform(0.1, 0.8)) for d in space.dimensions}}


def summary(ratios: list[float]) -> dict[str, float]:
    mid = statistics.median(ratios)
    return {"median": mid, "min": min(ratios), "max": max(ratios), "spread": (max(ratios) - min(ratios)) / mid}


def run(arch: str, batch: int, rounds: int, seconds: float) -> list[dict[str, Any]]:
    space, _ = space_for(arch)
    meter = LatencyMeter(MeterSettings(batch_size=batch, threads=1, max_seconds=seconds, ci_halfwidth=0.01))
    example = meter.example(space.identity.in_channels, space.identity.input_size)
    chosen = plans(space)
    files = {name: artifact_files(space, ratios) for name, ratios in chosen.items()}
    pruned = {name: space.apply(ratios).eval() for name, ratios in chosen.items()}
    timed: dict[tuple[str, str], list[float]] = {(n, m): [] for n in chosen for m in MODES}
    for k in range(rounds):
        for name in chosen:
            timed[(name, "fresh")].append(retime_files(meter, files[name], None, seconds).ratio)
            timed[(name, "in-process")].append(meter.compare(pruned[name], space.base, example,
                                                             max_seconds=seconds).ratio)
        print(f"{arch} b{batch} round {k + 1}/{rounds}", flush=True)
    return [{"arch": arch, "batch_size": batch, "plan": name, "mode": mode, "timings": len(v), **summary(v),
             "ratios": v} for (name, mode), v in timed.items()]


def render(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    return "\n".join([
        f"# Re-timing the same plan: one process vs fresh processes ({machine(env)})", "",
        "CPU, 1 thread, eager, pinned; each timing is one interleaved comparison against the base. "
        "fresh: a new interpreter per timing (`measurement.retime`, what a job's final re-timing and "
        "`prunesearch evaluate` run); in-process: the bench process, repeated. Plans timed in rounds, every "
        "plan once per round. spread = (max - min) / median. Nothing else ran.", "",
        markdown_table(rows, ["arch", "batch_size", "plan", "mode", "timings", "median", "min", "max", "spread"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=["resnet20"])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="max seconds per comparison")
    args = parser.parse_args()
    env, start = environment(), time.perf_counter()
    rows = [r for arch in args.archs for batch in args.batches for r in run(arch, batch, args.rounds, args.seconds)]
    env["seconds"] = round(time.perf_counter() - start, 1)
    write("retime_repeat", {"environment": env, "rows": rows}, render(rows, env))


if __name__ == "__main__":
    main()
