"""How far a lookup table's prediction is from the whole plans a quality run measured, replayed offline.

Every plan a job times on the device is kept in its `history.json` with its measured latency ratio. This
prices those plans again on one or more cached tables (nothing is timed) and reports, per table and plan
family (width only, or blocks dropped too), the median and 90th-percentile absolute error of:
  * raw: the table's layer sum, calibrated on the job's base latency;
  * calibrated: the same, corrected online by the plans the job measured before this one
    (`LatencyTable.observe` replayed in the job's order: what its search saw).
Two tables of one device setting built at different times (or by different code) thus score against the
same measurements: `--table old.json new.json`.

    python bench/lut_replay.py --table ~/.cache/prunesearch/lut/KEY.json [more.json ...] \
        --runs /tmp/prunesearch-quality --jobs 'quality-*-latency_ms0.55-b1-*' --results lut_replay_NAME
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import cpu_name, markdown_table, median_p90, write
from measurement.latency import LatencyMeter, MeterSettings
from measurement.lut import LatencyTable
from service.preflight import preflight_spec
from service.spec import JobSpec

SLOW = 1.3  # a grid point this much slower in one table than in another is called out


def replay(table: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    """Every plan the job measured, priced on `table` as the job would have: raw, then calibrated online."""
    report = json.loads((folder / "report.json").read_text())
    space = preflight_spec(JobSpec.model_validate_json((folder / "job.json").read_text()), None)
    lut = LatencyTable(space, LatencyMeter(MeterSettings(batch_size=table["settings"]["batch_size"])))
    lut.entries = table["entries"]
    lut.calibrate(report["base"]["latency_budget_phase"]["median_ms"])
    rows: list[dict[str, Any]] = []
    for t in json.loads((folder / "history.json").read_text()):
        if t["latency_source"] != "measured" or t["latency_ratio"] is None:
            continue
        kept = space.kept_for(t["ratios"])
        calibrated = lut.ratio(kept) if lut.observed else None  # on the plans before it, as the job's search
        dropped = any(v == 0.0 for v in lut.breakdown(kept).values())
        rows.append({"job": folder.name, "family": "blocks dropped" if dropped else "width only",
                     "raw": lut.raw_ratio(kept), "calibrated": calibrated, "measured": t["latency_ratio"]})
        lut.observe(kept, t["latency_ratio"])
    return rows


def summary(name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for family in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == family]
        raw = [r["raw"] / r["measured"] - 1 for r in mine]
        cal = [abs(r["calibrated"] / r["measured"] - 1) for r in mine if r["calibrated"] is not None]
        row: dict[str, Any] = {"table": name, "family": family, "plans": len(mine),
                               "raw signed median": statistics.median(raw)}
        row["raw median"], row["raw p90"] = median_p90([abs(e) for e in raw])
        if cal:
            row["calibrated median"], row["calibrated p90"] = median_p90(cal)
        out.append(row)
    return out


def slow_points(tables: list[dict[str, Any]]) -> str:
    """How many grid points the first table holds at over SLOW x the last one's (and the reverse)."""
    first, last = tables[0]["entries"], tables[-1]["entries"]
    pairs = [(first[k][p], last[k][p]) for k in first if k in last for p in first[k] if p in last[k]]
    over = sum(a > SLOW * b for a, b in pairs)
    under = sum(b > SLOW * a for a, b in pairs)
    return (f"Of {len(pairs)} grid points in both, the first table holds {over} at over {SLOW}x the last one's "
            f"time and the last {under} at over {SLOW}x the first's.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, nargs="+", required=True, help="cached lookup tables, one setting")
    parser.add_argument("--runs", type=Path, required=True, help="a quality run's job folders")
    parser.add_argument("--jobs", default="*", help="which job folders under --runs")
    parser.add_argument("--results", required=True)
    args = parser.parse_args()
    tables = [json.loads(p.read_text()) for p in args.table]
    folders = [f for f in sorted(args.runs.glob(args.jobs)) if (f / "report.json").is_file()]
    rows = [r for name, t in zip(args.table, tables, strict=True)
            for r in summary(name.name, [p for f in folders for p in replay(t, f)])]
    s = tables[0]["settings"]
    data = {"settings": [t["settings"] for t in tables], "jobs": [f.name for f in folders], "rows": rows}
    lines = [f"# Lookup-table error on the plans a quality run measured — {cpu_name(s)}, {s['device']}, "
             f"{s['threads']} thread(s), batch {s['batch_size']}, {s['runtime']}, torch {s['torch']}", "",
             f"{len(folders)} jobs' measured plans, priced again on each table (nothing timed here). Error: predicted "
             "latency ratio / measured - 1; signed > 0 means the table predicted slower than the device ran. "
             "calibrated: corrected online by the plans the job measured before (what its search saw).", "",
             slow_points(tables) if len(tables) > 1 else "", "",
             markdown_table(rows, ["table", "family", "plans", "raw signed median", "raw median", "raw p90",
                                   "calibrated median", "calibrated p90"])]
    write(args.results, data, "\n".join(lines))


if __name__ == "__main__":
    main()
