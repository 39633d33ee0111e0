"""Does the final choice pick the contender that ends best? The selection signal replayed on jobs' contenders.

A job returns one of a few contenders (its search's leading plans and the baselines that meet the budget),
ranked by validation accuracy after `selection_steps` short fine-tune steps on `val_limit` samples
(`agents.selection.refine`). Close contenders differ there by less than the sampling noise of 1000 images.
This takes each job folder's contenders again (`report.json` `selected.ranking`) and scores them with:
  * val_0_job / val_20_job: what the job recorded, after BN recalibration alone (the search's own score) and
    after its 20 selection steps (what it ranked by);
  * val_20_limit: the job's own signal (20 steps, the job's `val_limit`), recomputed;
  * val_20_full / val_100_full: 20 or 100 steps, scored on the whole validation split;
  * test_acc_ft: what the user gets, the job's final fine-tune (its seed) scored on the test split.
Per signal: in how many jobs it picks the contender that ends best, and the mean points it gives up.
Accuracy only: nothing is timed.

    python bench/selection_replay.py /tmp/prunesearch-quality/quality-halp-*-b1-* --results selection_replay_NAME
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.selection import break_ties
from bench.results_io import RESULTS, environment, machine, markdown_table, write
from measurement.accuracy import accuracy
from search_spaces.preflight import checked_space
from service.execution.evaluation import restore_accuracy
from service.pipeline import accuracy_recipe, base_model, final_model, load_data
from service.preflight import identity_of, space_settings
from service.spec import JobSpec

SIGNALS = ("val_0_job", "val_20_job", "val_20_limit", "val_20_full", "val_100_full")
TIES = "val_20_job, ties by val_0_job"  # the jobs' rule since `agents.selection.break_ties`


def contenders(folder: Path) -> list[dict[str, Any]]:
    """The job's ranked contenders with their plans: search candidates from the history, baselines by name."""
    report = json.loads((folder / "report.json").read_text())
    spec = JobSpec.model_validate_json((folder / "job.json").read_text())
    history = {t["id"]: t for t in json.loads((folder / "history.json").read_text())}
    baselines = {f"baseline:{b['name']}": b for b in report["baselines"]}
    out = []
    for c in report["selected"]["ranking"]:
        source = c["source"]
        ratios = (history[c["candidate"]] if source == "search" else baselines[source])["ratios"]
        chosen = c["candidate"] == report["selected"]["candidate_id"] and source == report["selected"]["source"]
        out.append({"job": folder.name, "source": source, "candidate": c["candidate"], "ratios": ratios,
                    "val_0_job": c["val_acc_common_recipe"], "val_20_job": c["val_acc"], "chosen": chosen,
                    "samples": min(spec.evaluation.val_limit or report["data"]["val"], report["data"]["val"])})
    return out


def score(folder: Path, rows: list[dict[str, Any]]) -> None:
    spec = JobSpec.model_validate_json((folder / "job.json").read_text())
    data = load_data(spec)
    base = base_model(spec, data, None)
    space = checked_space(base, identity_of(spec), criterion=spec.criterion, seed=spec.seed, phase="space",
                          **space_settings(spec))
    recipe = accuracy_recipe(spec)
    for row in rows:
        start = time.perf_counter()
        for name, steps, limit in (("val_20_limit", 20, recipe.val_limit), ("val_20_full", 20, None),
                                   ("val_100_full", 100, None)):
            model = restore_accuracy(space.apply(row["ratios"]), data, replace(recipe, short_steps=steps))
            row[name] = accuracy(model, data.val, recipe.batch_size, limit)
        _, scores = final_model(space, row["ratios"], base, data, spec, spec.finetune.final_epochs)
        row["test_acc_ft"] = scores["test_acc_ft"]
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({k: v for k, v in row.items() if k != "ratios"}), flush=True)


def picks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per signal: jobs where its top contender is the one that ends best, and the mean points given up."""
    jobs = sorted({r["job"] for r in rows})
    out = []
    for signal in (*SIGNALS, TIES):
        regrets = []
        for job in jobs:
            mine = [r for r in rows if r["job"] == job]
            best = max(r["test_acc_ft"] for r in mine)
            regrets.append(best - pick(mine, signal)["test_acc_ft"])
        out.append({"signal": signal, "jobs": len(jobs), "picks the best": sum(g == 0 for g in regrets),
                    "mean points given up": 100 * statistics.mean(regrets)})
    return out


def pick(mine: list[dict[str, Any]], signal: str) -> dict[str, Any]:
    """The contender a signal puts first; TIES ranks as `refine` does, by val_20 with near-ties by val_0."""
    if signal != TIES:
        return max(mine, key=lambda r: r[signal])
    by_20 = sorted(mine, key=lambda r: -r["val_20_job"])
    return break_ties(by_20, lambda r: r["val_20_job"], lambda r: r["val_0_job"], mine[0]["samples"])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="job folders (report.json, history.json, job.json)")
    parser.add_argument("--results", required=True)
    args = parser.parse_args()
    path = RESULTS / f"{args.results}.json"
    state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"environment": environment(),
                                                                                  "rows": []}
    for folder in args.folders:
        if any(r["job"] == folder.name for r in state["rows"]) or not (folder / "report.json").is_file():
            continue  # resumable: a job's contenders are scored together
        rows = contenders(folder)
        score(folder, rows)
        state["rows"] += [{k: v for k, v in r.items() if k != "ratios"} for r in rows]
        write(args.results, state, render(state))


def render(state: dict[str, Any]) -> str:
    rows = state["rows"]
    return "\n".join([
        f"# Does the final choice pick the contender that ends best? ({machine(state['environment'])})", "",
        "Each job's contenders (its search's leading plans and the baselines meeting the budget), scored again: "
        "val_0_job is the search's own score (BN recalibration alone), val_20_job what the job ranked them by "
        "(20 fine-tune steps, its val_limit of validation samples); "
        "val_20_limit the same recomputed here; val_20_full and val_100_full 20 or 100 steps scored on the whole "
        "validation split; test_acc_ft the job's own final fine-tune (its seed), on the test split.", "",
        markdown_table(picks(rows), ["signal", "jobs", "picks the best", "mean points given up"]), "",
        markdown_table(rows, ["job", "source", "candidate", "chosen", *SIGNALS, "test_acc_ft"])])


if __name__ == "__main__":
    main()
