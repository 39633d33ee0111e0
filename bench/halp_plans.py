"""What HALP's jobs in a quality run did with blocks and budget gaps, read back from their job folders.

For each HALP job under `--runs` (bench/quality.py's `--runs`): the blocks its returned plan drops and
the runs of adjacent blocks it empties, the scan's drop for each block alone and each run's excess
when dropped at once, each path's fill (what met before it, what the filled plan timed), and where the
returned plan came from, with the baselines' search-time latency ratios. It reads what the jobs wrote;
it times nothing: `python bench/halp_plans.py --runs /tmp/prunesearch-quality`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import environment, markdown_table, write


def fills(variants: list[dict[str, Any]]) -> list[str]:
    """Each path whose fill gave removals back: the best plan that met before it, then the filled plan's
    timing (its path's last probe: the fill runs once and is timed next)."""
    out = []
    for v in variants:
        fill, probes = v.get("fill"), v.get("probes", [])
        if not fill or not fill.get("given_back") or len(probes) < 2:
            continue
        before = max((p["latency_ratio"] for p in probes[:-1] if p["meets_budget"]), default=None)
        last = probes[-1]
        out.append(f"{v['name']}: {before:.3f}x -> {last['latency_ratio']:.3f}x "
                   f"({'met' if last['meets_budget'] else 'missed'})" if before is not None else v["name"])
    return out


def job_row(folder: Path) -> dict[str, Any]:
    agent = json.loads((folder / "agent.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    plan = json.loads((folder / "plan.json").read_text())
    dropped = [g["name"] for g in plan["groups"] if g["granularity"] == "block" and g["kept"] == 0]
    scan = agent["scan"]
    runs = scan.get("run_drops") or {}
    return {
        "job": folder.name, "blocks_dropped": dropped,
        "runs_emptied": [r for r in runs if all(b in dropped for b in r.split("+"))] if runs else "(no run scan)",
        "block_drops": scan.get("block_drops"), "run_excess": runs,
        "fills": fills(agent.get("variants", [])),
        "source": report["selected"]["source"], "latency_ratio": report["ratios"]["latency"],
        "ranking": report["selected"].get("ranking"),
        "baselines_search_ratio": {b["name"]: b["latency_ratio"] for b in report.get("baselines", [])},
    }


def render(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    def short(d: dict[str, float] | None) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in (d or {}).items()) or "–"
    table = [{"job": r["job"], "blocks dropped": ", ".join(r["blocks_dropped"]) or "–",
              "runs emptied": r["runs_emptied"] if isinstance(r["runs_emptied"], str) else
              ", ".join(r["runs_emptied"]) or "–",
              "block drops (alone)": short(r["block_drops"]), "run excess": short(r["run_excess"]),
              "fills": "; ".join(r["fills"]) or "–", "returned": r["source"], "ratio": r["latency_ratio"],
              "baselines (search ratio)": short(r["baselines_search_ratio"])} for r in rows]
    return "\n".join([
        "# HALP's blocks and fills in the quality jobs", "",
        f"Read from the job folders (nothing timed here); machine of the jobs: {env['cpu']}. `run excess` is "
        "what a run of adjacent blocks lost dropped at once beyond its blocks' own drops (empty: the job "
        "predates that scan); a fill reads best met plan before it -> the filled plan's timing.", "",
        markdown_table(table, list(table[0]) if table else ["job"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default="/tmp/prunesearch-quality")
    args = parser.parse_args()
    folders = sorted(f for f in Path(args.runs).glob("quality-halp*") if (f / "agent.json").exists())
    rows = [job_row(f) for f in folders]
    env = environment()
    write("halp_plans", {"environment": env, "jobs": rows}, render(rows, env))


if __name__ == "__main__":
    main()
