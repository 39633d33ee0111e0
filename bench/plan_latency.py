"""Is the latency model right where decisions are made? Whole-plan prediction error of the lookup table.

For each architecture and device setting (CPU, 1 thread, eager, batch 1 and 32): the lookup table is
built on this machine (cached) and calibrated on the base, then whole plans are timed against the
base, interleaved: uniform plans, random per-group plans and HALP allocations, all between about
0.3x and 0.9x predicted latency. Two predictions are scored against each measurement:
  * raw: the table's layer sum (plus the base-calibrated constant);
  * calibrated: the same table corrected by the plans measured *before* this one in the run
    (`LatencyTable.observe`, fitted online, as a job does), so the error is what a search sees.
Reported: median and 90th-percentile absolute relative error, per architecture and setting. Latency
does not depend on weight values, so MobileNetV2 runs from its committed checkpoint if present, else
from a random initialisation. Run on an otherwise idle machine; results carry the CPU model.

    python bench/plan_latency.py [--archs resnet20 mobilenetv2] [--batches 1 32] [--plans 24]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.base import SearchContext
from agents.budget import Budget
from agents.halp import HALPAgent
from bench.results_io import RESULTS, environment, machine, markdown_table, median_p90, write
from measurement.latency import LatencyMeter, MeterSettings
from measurement.lut import LatencyTable, fit_scale
from search_spaces.plan import ModelIdentity
from search_spaces.space import PruningSpace
from search_spaces.weights import load_into, read_state_dict
from search_spaces.zoo import build_model
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"resnet20": ROOT / "checkpoints/resnet20_fashion-mnist/model.safetensors",
               "mobilenetv2": ROOT / "checkpoints/mobilenetv2_fashion-mnist/model.safetensors"}


def space_for(arch: str) -> tuple[PruningSpace, str]:
    ident = ModelIdentity(arch=arch, num_classes=10, in_channels=1, input_size=28)
    model = build_model(ident)
    source = "random init"
    if CHECKPOINTS[arch].is_file():
        load_into(model, read_state_dict(CHECKPOINTS[arch]), str(CHECKPOINTS[arch]))
        source = str(CHECKPOINTS[arch].relative_to(ROOT))
    return PruningSpace(model.eval(), ident), source


def plans(space: PruningSpace, lut: LatencyTable, base_ms: float, n: int, seed: int
          ) -> list[tuple[str, dict[str, float]]]:
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, float]]] = [(f"uniform {r}", space.uniform(r)) for r in (0.2, 0.4, 0.6)]
    for target in (0.4, 0.55, 0.7):
        agent = HALPAgent(SearchContext(space, Budget("latency_ms", target * base_ms, base_ms), 0, lut=lut),
                          variants=["taylor"])
        path = agent.paths[0]
        i = next((i for i, k in enumerate(path.plans) if lut.raw_ratio(k) <= target), len(path.plans) - 1)
        out.append((f"halp taylor {target}", agent._ratios(path.plans[i])))
    while len(out) < n:
        top = rng.uniform(0.2, 0.8)
        out.append((f"random {len(out)}", {d.name: min(d.max_ratio, top * rng.uniform(0.3, 1.3))
                                           for d in space.dimensions}))
    rng.shuffle(out)  # the online calibration sees plans in no particular order
    return out


def run(arch: str, batch: int, n: int, seconds: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    space, source = space_for(arch)
    meter = LatencyMeter(MeterSettings(batch_size=batch, threads=1, max_seconds=seconds, ci_halfwidth=0.01))
    lut = LatencyTable(space, meter, Settings().lut_cache_dir)
    start = time.perf_counter()
    timed = lut.build()
    build_s = time.perf_counter() - start
    x = meter.example(1, 28)
    base_call = meter.prepare(space.base, x)
    base_ms = meter.measure_call(base_call, 30).median_ms
    lut.calibrate(base_ms)
    rows: list[dict[str, Any]] = []
    for name, ratios in plans(space, lut, base_ms, n, seed=batch):
        kept = space.kept_for(ratios)
        raw, calibrated = lut.raw_ratio(kept), lut.ratio(kept)  # calibrated on the plans before this one
        stats = meter.compare_calls(meter.prepare(space.apply(ratios), x), base_call)
        lut.observe(kept, stats.ratio)
        rows.append({"arch": arch, "batch_size": batch, "plan": name, "measured": stats.ratio,
                     "ci": [stats.ci_low, stats.ci_high], "raw": raw, "calibrated": calibrated,
                     "raw_error": abs(raw / stats.ratio - 1), "calibrated_error": abs(calibrated / stats.ratio - 1),
                     "scale_after": lut.scale})
        print(rows[-1], flush=True)
    summary = {"arch": arch, "batch_size": batch, "plans": len(rows), "weights": source,
               "lut_points_timed": timed, "lut_build_s": round(build_s, 1)}
    return rows, summary


def summarise(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Error statistics, with the calibration replayed over the rows in the order they were measured:
    the same measurements score any version of `fit_scale`."""
    pairs: list[tuple[float, float]] = []
    for r in rows:
        r["calibrated"] = 1 - fit_scale(pairs) * (1 - r["raw"]) if pairs else r["raw"]
        r["calibrated_error"] = abs(r["calibrated"] / r["measured"] - 1)
        pairs.append((r["raw"], r["measured"]))
    out = dict(summary)
    for kind in ("raw", "calibrated"):
        # the first plan has nothing to calibrate on
        out[f"{kind}_median"], out[f"{kind}_p90"] = median_p90([float(r[f"{kind}_error"]) for r in rows[1:]])
    out["final_scale"] = fit_scale(pairs)
    return out


def render(env: dict[str, Any], summaries: list[dict[str, Any]]) -> str:
    return "\n".join(["# Lookup-table error on whole plans (CPU, 1 thread, eager)", "",
                      f"Last run: {machine(env)}; {env['note']}. Rows "
                      "without a cpu were measured on an Intel Xeon, idle, at commit 39375ef, before the table's "
                      "layer scale (`measurement.lut.calibrate`) existed.", "",
                      "Absolute relative error of the predicted latency ratio against the interleaved measurement. "
                      "calibrated: the table corrected online by the plans measured before it (what a job's search "
                      "sees; `measurement.lut.fit_scale` replayed over the rows in measurement order).", "",
                      markdown_table(summaries, ["arch", "batch_size", "plans", "raw_median", "raw_p90",
                                                 "calibrated_median", "calibrated_p90", "final_scale",
                                                 "lut_points_timed", "lut_build_s", "cpu", "commit", "weights"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="*", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--plans", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=8.0, help="time cap per interleaved measurement")
    parser.add_argument("--note", default="idle machine", help="what else ran")
    parser.add_argument("--render-only", action="store_true", help="re-score the committed rows, time nothing")
    args = parser.parse_args()
    path = RESULTS / "plan_latency.json"
    if args.render_only:
        saved = json.loads(path.read_text())
        summaries = [summarise([r for r in saved["rows"] if (r["arch"], r["batch_size"]) ==
                                (s["arch"], s["batch_size"])], s) for s in saved["summary"]]
        write("plan_latency", {**saved, "summary": summaries}, render(saved["environment"], summaries))
        return
    env = {**environment(), "note": args.note}
    saved = json.loads(path.read_text()) if path.is_file() else {"summary": [], "rows": []}
    done = {(s["arch"], s["batch_size"]) for s in saved["summary"]}
    all_rows, summaries = saved["rows"], saved["summary"]
    for arch in args.archs:
        for batch in args.batches:
            if (arch, batch) in done:  # resumable: a setting already measured is kept, not re-timed
                continue
            rows, summary = run(arch, batch, args.plans, args.seconds)
            all_rows += rows
            summaries.append({**summarise(rows, summary), "cpu": env["cpu"], "commit": env["commit"],
                              "note": args.note})
            write("plan_latency", {"environment": env, "summary": summaries, "rows": all_rows},
                  render(env, summaries))


if __name__ == "__main__":
    main()
