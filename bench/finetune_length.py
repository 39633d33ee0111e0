"""Does a longer final fine-tune separate the plans a job returns? The same plans, fine-tuned longer.

`bench/quality.py` gives every row the same 0.5-epoch distilled fine-tune, and at some budgets every
plan ends within a few tenths of a point of the others. Here the plans that quality jobs returned are
rebuilt from their job folders (job.json + plan.json: the space the job searched, the base checkpoint,
the plan's ratios; the fine-tuned weights are not used) and fine-tuned again exactly as the job's final
model was (BN recalibration, distillation from the base, cosine schedule, the job's seed and learning
rate), once per length in `--epochs`. Accuracy only, nothing timed, so it may use every core; the
0.5-epoch column reproduces what the job reported, up to the thread count's rounding.

    python bench/finetune_length.py --jobs /tmp/prunesearch-quality/quality-*-latency_ms0.55-b1-* --epochs 0.5 2
    python bench/finetune_length.py --jobs ... --epochs 2 --results finetune_length_mobilenetv2_xeon_avx512
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.results_io import RESULTS, environment, machine, markdown_table, write
from search_spaces.artifacts import PLAN_FILE
from search_spaces.plan import Plan
from search_spaces.preflight import checked_space
from service.pipeline import base_model, final_model, load_data
from service.preflight import identity_of, space_settings
from service.spec import parse_spec

NAME = "finetune_length"


def finetune(folder: Path, epochs: list[float]) -> list[dict[str, Any]]:
    """The job's returned plan, rebuilt on its base and fine-tuned for each length."""
    spec = parse_spec(json.loads((folder / "job.json").read_text()))
    report = json.loads((folder / "report.json").read_text())
    data = load_data(spec)
    model = base_model(spec, data, None)
    space = checked_space(model, identity_of(spec), criterion=spec.criterion, seed=spec.seed, phase="space",
                          **space_settings(spec))
    ratios = Plan.read(folder / PLAN_FILE).ratios
    rows = []
    for length in epochs:
        start = time.perf_counter()
        _, scores = final_model(space, ratios, model, data, spec, length)
        rows.append({"job": spec.name, "arch": spec.model.arch, "strategy": report["strategy"],
                     "space": "+".join(spec.dimensions),
                     "seed": spec.seed, "source": report["selected"]["source"], "epochs": length,
                     "test_acc": scores["test_acc"], "test_acc_ft": scores["test_acc_ft"],
                     "teacher_test_acc": report["teacher"]["test_acc"],
                     "job_test_acc_ft": report["pruned"].get("test_acc_ft"),
                     "latency_ratio": report["latency"]["ratio"], "flops_ratio": report["ratios"]["flops"],
                     "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± half-range over seeds, per architecture, strategy, space, returned plan's source and length."""
    def key(r: dict[str, Any]) -> tuple[str, str, str, str, float]:
        return r.get("arch", "resnet20"), r["strategy"], r["space"], r["source"], r["epochs"]

    out = []
    for k in sorted({key(r) for r in rows}):
        accs = [r["test_acc_ft"] for r in rows if key(r) == k]
        out.append({"arch": k[0], "strategy": k[1], "space": k[2], "source": k[3], "epochs": k[4], "seeds": len(accs),
                    "test_acc_ft": statistics.fmean(accs), "half_range": (max(accs) - min(accs)) / 2})
    return out


def render(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    return "\n".join([
        f"# Final fine-tune length vs the plans' final accuracy ({machine(env)})", "",
        "Each plan a quality job returned, rebuilt on the base checkpoint and fine-tuned as the job's final "
        "model was (BN recalibration, distilled from the base, T=4, alpha=0.9, cosine LR), for each length. "
        "job_test_acc_ft: what the job reported after its own 0.5-epoch fine-tune. Accuracy only: nothing "
        f"timed, {torch.get_num_threads()} torch threads.", "",
        markdown_table(summary(rows), ["arch", "strategy", "space", "source", "epochs", "seeds", "test_acc_ft",
                                       "half_range"],
                       {"test_acc_ft": ".4f", "half_range": ".4f"}), "",
        markdown_table(rows, ["arch", "strategy", "space", "seed", "source", "epochs", "test_acc", "test_acc_ft",
                              "job_test_acc_ft", "teacher_test_acc", "latency_ratio", "flops_ratio", "seconds"],
                       {"test_acc": ".4f", "test_acc_ft": ".4f", "job_test_acc_ft": ".4f",
                        "teacher_test_acc": ".4f"})])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", required=True, help="job folders (job.json, plan.json, report.json)")
    parser.add_argument("--epochs", type=float, nargs="+", default=[0.5, 2.0])
    parser.add_argument("--results", default=NAME, help="results name under bench/results/: another machine's "
                        "rows go to their own file, since the file records one machine")
    args = parser.parse_args()
    path = RESULTS / f"{args.results}.json"
    done = json.loads(path.read_text())["rows"] if path.is_file() else []  # resumable: a folder once per length
    env = environment()
    for folder in map(Path, args.jobs):
        todo = [e for e in args.epochs if not any(r["job"] == folder.name and r["epochs"] == e for r in done)]
        if todo:
            done += finetune(folder, todo)
            write(args.results, {"environment": env, "rows": done}, render(done, env))


if __name__ == "__main__":
    main()
