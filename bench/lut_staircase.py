"""Where a device's kernels switch: each layer's latency staircase, read from a job's cached lookup table.

A lookup table times every layer alone on a grid of kept channel counts (`measurement/lut.py`). Along
that grid latency is a staircase, and on some machines a steep one: on an AVX512 VM at batch 32 a
ResNet-20 layer cost about three times as much with 18 channels as with 16. A plan that keeps a width just
over a step pays for channels it barely uses, and one a little under it leaves budget unused; that is
where searches that price plans on the table part from uniform and global plans. This reads a cached
table (nothing is timed) and lists each layer's steps, with the kept counts of the plans a quality run
returned, so that one can see which plans sit on which side of a step.

    python bench/lut_staircase.py --table ~/.cache/prunesearch/lut/KEY.json \
        [--runs /tmp/prunesearch-quality --jobs 'quality-*-latency_ms0.55-b32-*'] --results lut_staircase_NAME
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import cpu_name, markdown_table, write

STEP = 1.3  # a grid point this much slower than the one below it is a step (a kernel switch)


def diagonal(entry: dict[str, float]) -> list[tuple[int, int, float]]:
    """The layer's time along its grid with input and output channels kept in the same proportion: the i-th
    input count with the i-th output count, or along the one axis that varies (a stem's input is fixed)."""
    keys = [tuple(map(int, k.split(","))) for k in entry]
    cins, couts = sorted({a for a, _ in keys}), sorted({b for _, b in keys})
    pairs = ([(cins[0], b) for b in couts] if len(cins) == 1 else [(a, couts[0]) for a in cins]
             if len(couts) == 1 else list(zip(cins, couts, strict=False)))
    return [(a, b, entry[f"{a},{b}"]) for a, b in pairs if f"{a},{b}" in entry]


def steps(series: list[tuple[int, int, float]]) -> list[dict[str, Any]]:
    """Each jump of more than STEP between neighbouring grid points: both sides' kept counts and times."""
    out = []
    for (a0, b0, t0), (a1, b1, t1) in itertools.pairwise(series):
        if t1 > STEP * t0:
            out.append({"fast": f"{a0}->{b0}", "fast_ms": t0, "slow": f"{a1}->{b1}", "slow_ms": t1,
                        "jump": t1 / t0})
    return out


def layer_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, entry in table["entries"].items():
        kind, cin, cout, k, s, _, hw, *_ = key.split("|")
        series = diagonal(entry)
        cout_counts = {b for _, b, _ in series}  # a classifier's outputs stay: its inputs are the axis
        found = steps(series)
        rows.append({"layer": f"{kind} {cin}->{cout} {k} {s} {hw}", "grid points": len(entry),
                     "kept -> ms (diagonal)": " ".join(f"{b if len(cout_counts) > 1 else a}:{t:.2f}"
                                                      for a, b, t in series),
                     "steps (fast side | slow side, x)": "; ".join(
                         f"{x['fast']} {x['fast_ms']:.2f} | {x['slow']} {x['slow_ms']:.2f}, {x['jump']:.1f}x"
                         for x in found) or "none", "steps": found})
    return rows


def plan_rows(runs: Path, pattern: str) -> list[dict[str, Any]]:
    """Kept counts of every width group (and dropped blocks) in each job folder's returned plan."""
    rows = []
    for folder in sorted(runs.glob(pattern)):
        plan_file, report_file = folder / "plan.json", folder / "report.json"
        if not plan_file.is_file() or not report_file.is_file():
            continue
        plan, report = json.loads(plan_file.read_text()), json.loads(report_file.read_text())
        groups = plan["groups"]
        rows.append({"job": folder.name, "strategy": report.get("strategy"),
                     "latency_ratio": report.get("latency", {}).get("ratio"),
                     "widths kept": " ".join(f"{g['name']}={g['kept']}" for g in groups
                                             if g["granularity"] != "block"),
                     "blocks dropped": " ".join(g["name"] for g in groups
                                                if g["granularity"] == "block" and g["kept"] == 0) or "none"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, required=True,
                        help="a cached lookup table (its settings name the device)")
    parser.add_argument("--runs", type=Path, default=None, help="a quality run's job folders")
    parser.add_argument("--jobs", default="*", help="which job folders under --runs")
    parser.add_argument("--results", required=True)
    args = parser.parse_args()
    table = json.loads(args.table.read_text())
    settings = table["settings"]
    layers = layer_rows(table)
    plans = plan_rows(args.runs, args.jobs) if args.runs else []
    data = {"settings": settings, "step": STEP, "layers": layers, "plans": plans}
    lines = [
        f"# Latency staircases in a lookup table — {cpu_name(settings)}, {settings['device']}, "
        f"{settings['threads']} thread(s), batch {settings['batch_size']}, {settings['runtime']}, "
        f"torch {settings['torch']}", "",
        "Each layer timed alone on the job's grid of kept channel counts (nothing here was timed again). A step is a "
        f"grid point more than {STEP}x slower than the one below it, along the grid with inputs and outputs kept in "
        "the same proportion: keeping the slow side's count costs that much more than the fast side's.", "",
        markdown_table(layers, ["layer", "grid points", "steps (fast side | slow side, x)", "kept -> ms (diagonal)"])]
    if plans:
        lines += ["", "Plans the quality jobs returned (kept counts per width group; residual streams are the groups "
                  "named after a stem or a shortcut):", "",
                  markdown_table(plans, ["job", "latency_ratio", "blocks dropped", "widths kept"])]
    write(args.results, data, "\n".join(lines))


if __name__ == "__main__":
    main()
