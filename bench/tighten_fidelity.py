"""Does a tightened plan run as much faster than the plan it came from as the job expects?

A job tightens a contender that misses its fresh re-timing: every width scaled by one factor until the
table, corrected on the job's measured plans, predicts the plan `factor` times as fast
(`agents.selection.rescaled_ratios`). On MobileNetV2 at 0.7x batch 32 two tightened copies re-timed slower
than their origins (0.729x from 0.707x, 0.731x from 0.709x; `quality_epyc_avx2_twopass_jobs.md`). A job now
times each copy against its origin before it scores or re-times it (`Rescaler.against`). This measures, on
a finished job's contenders, how well each way of predicting that ratio agrees with fresh timings:

  * table_over:      the corrected table's latency of the copy over its origin's (what the job aims by);
  * fresh_against:   the copy timed against its origin in a new interpreter (`retime_files(reference=)`,
                     through the job's backend): what the job's Rescaler checks;
  * timed_over:      the two timed interleaved in the backend's timing process, which times everything else
                     too (the first version of the check);
  * timed_over_here: the same in this bench's process, which loaded the data and built models, timed nothing;
  * fresh_over (the reference): each plan re-timed against the base in new interpreters, divided.

Run on an otherwise idle machine:

    python bench/tighten_fidelity.py --job /tmp/prunesearch-quality/quality-halp-latency_ms0.7-b32-l1-mobilenetv2-0 \
        [--factors 0.97 0.94 0.9] [--top 4] [--fresh-repeats 2] --results tighten_fidelity_NAME
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.base import Evaluation, SearchContext
from agents.selection import rescaled_ratios
from bench.results_io import environment, machine, markdown_table, write
from measurement.latency import LatencyMeter, RatioStats
from measurement.retime import retime_files
from search_spaces.space import PruningSpace
from service.config import Settings
from service.execution import open_execution
from service.pipeline import Phases, artifact_files, meter_settings, prepare
from service.spec import parse_spec

PREDICTORS = ("table_over", "fresh_against", "timed_over", "timed_over_here")


def time_against(meter: LatencyMeter, space: PruningSpace, plan: dict[str, float], reference: dict[str, float]
                 ) -> RatioStats:
    """`plan`'s latency over `reference`'s, timed interleaved in the process it runs in."""
    example = meter.example(space.identity.in_channels, space.identity.input_size)
    return meter.compare(space.apply(plan), space.apply(reference), example)


def history(folder: Path) -> list[Evaluation]:
    return [Evaluation.from_record(r) for r in json.loads((folder / "history.json").read_text())]


def contenders(folder: Path, top: int) -> list[Evaluation]:
    """The job's measured plans nearest under its budget's edge, most accurate first: the plans a choice
    would re-time and, on a miss, tighten."""
    target = json.loads((folder / "report.json").read_text())["budget"]["target_ratio"]
    near = [e for e in history(folder) if e.latency_source == "measured" and e.latency_ratio is not None
            and 0.9 * target <= e.latency_ratio <= 1.03 * target and e.val_acc is not None]
    return sorted(near, key=lambda e: -(e.val_acc or 0.0))[:top]


def run(folder: Path, factors: list[float], top: int, fresh_repeats: int
        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Everything timed where the job timed it (its execution backend: a Ray worker for Ray jobs), and the
    one-process ratio also in this process, which loaded the data and built the models."""
    spec = parse_spec(json.loads((folder / "job.json").read_text()))
    meter, settings = LatencyMeter(meter_settings(spec)), Settings()
    seconds = max(2 * spec.measurement.max_seconds, 10.0)  # as the job's final re-timing
    rows = []
    with open_execution(spec, settings, meter) as execution:
        prep = prepare(spec, settings, execution, Phases(lambda event: None), lambda event: None)
        space, lut = prep.space, prep.lut
        assert lut is not None, "the job's budget is not a latency budget"
        ctx = SearchContext(space=space, budget=prep.budget, seed=spec.seed, lut=lut)
        ctx.record(history(folder))  # the table corrected on the job's measured plans, as its choice used it

        def fresh(files: dict[str, bytes]) -> list[float]:
            return [execution.time(retime_files, files, None, seconds)[0].ratio for _ in range(fresh_repeats)]

        for origin in contenders(folder, top):
            o = dict(origin.candidate.ratios)
            files_o = artifact_files(space, o)
            fresh_o = fresh(files_o)
            for f in factors:
                if (t := rescaled_ratios(ctx, o, f)) is None:
                    continue
                files_t = artifact_files(space, t)
                fresh_t = fresh(files_t)
                against = execution.time(retime_files, files_t, None, seconds, files_o)[0].ratio
                over = execution.time(time_against, space, t, o)[0].ratio
                overs = [a / b for a, b in zip(fresh_t, fresh_o, strict=True)]
                mid_o, mid_t = statistics.median(fresh_o), statistics.median(fresh_t)
                rows.append({"origin": origin.candidate.id, "search_ratio": origin.latency_ratio, "factor": f,
                             "table_over": ctx.predicted_latency_ratio(t) / ctx.predicted_latency_ratio(o),
                             "fresh_against": against, "timed_over": over,
                             "timed_over_here": time_against(meter, space, t, o).ratio,
                             "fresh_origin": mid_o, "fresh_tightened": mid_t, "fresh_over": mid_t / mid_o,
                             "fresh_over_range": max(overs) - min(overs), "expected": mid_o * against,
                             "fresh_origins": fresh_o, "fresh_tightenings": fresh_t})
                print(json.dumps(rows[-1]), flush=True)
    return rows, {"job": folder.name, "budget": prep.budget.describe(), "settings": meter.settings.describe(),
                  "backend": spec.execution.backend, "fresh_repeats": fresh_repeats}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each predictor's error against the fresh ratio (median and max of the absolute error, and the mean
    signed error: positive where it calls the tightened plan slower than the fresh timings do)."""
    out: dict[str, Any] = {"pairs": len(rows), "slower_fresh": sum(r["fresh_over"] >= 1 for r in rows),
                           "fresh_over_range_median": statistics.median(r["fresh_over_range"] for r in rows)}
    for name in PREDICTORS:
        err = [r[name] - r["fresh_over"] for r in rows]
        out[name] = {"median_abs": statistics.median(map(abs, err)), "max_abs": max(map(abs, err)),
                     "mean": statistics.fmean(err), "slower": sum(r[name] >= 1 for r in rows)}
    return out


def render(state: dict[str, Any]) -> str:
    cols = ["origin", "search_ratio", "factor", *PREDICTORS, "fresh_over",
            "fresh_over_range", "fresh_origin", "fresh_tightened", "expected"]
    s, meta = state["summary"], state["meta"]
    errors = [{"predictor": name, **s[name]} for name in PREDICTORS]
    return "\n".join([
        f"# Tightened plans against their origins: {meta['job']}", "",
        f"Machine: {state['machine']}. Nothing else ran while it timed. Backend: {meta['backend']}; "
        f"{meta['fresh_repeats']} fresh timings of each plan.", "",
        "`table_over`: the corrected table's latency of the tightened plan over its origin's (what the job aims "
        "by); `fresh_against`: the two timed interleaved in a new interpreter (what the job's Rescaler checks); "
        "`timed_over`: the same in the backend's long-lived timing process; `timed_over_here`: the same in "
        "this bench's process, which loaded the data and timed nothing; `fresh_over`: the median of each "
        "plan's fresh re-timings against the base, divided, with the range of the per-timing quotients; "
        "`expected`: the origin's fresh ratio times `fresh_against`, the fresh ratio the job expects.", "",
        markdown_table(state["rows"], cols), "",
        f"{s['pairs']} pairs; {s['slower_fresh']} re-timed fresh slower than their origin. The median range of "
        f"the fresh quotient over its repeats: {s['fresh_over_range_median']:.3f}. Each predictor against the "
        "fresh quotient (`mean`: positive where it calls the tightened plan slower; `slower`: pairs it put at "
        "or over 1):", "",
        markdown_table(errors, ["predictor", "median_abs", "max_abs", "mean", "slower"]), ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", type=Path, required=True, help="a finished job's folder (job.json, history.json)")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.97, 0.94, 0.9])
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--fresh-repeats", type=int, default=2, help="fresh timings of each plan (their median)")
    ap.add_argument("--results", default="tighten_fidelity")
    args = ap.parse_args()
    rows, meta = run(args.job, args.factors, args.top, args.fresh_repeats)
    env = environment()
    state = {"machine": machine(env), "environment": env, "meta": meta, "rows": rows,
             "summary": summary(rows)}
    write(args.results, state, render(state))


if __name__ == "__main__":
    main()
