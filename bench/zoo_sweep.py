"""Real-model sweep: every torchvision classification architecture, through the space a job builds.

Per model: build it untrained (weights do not change structure or dense speed), build the channel
space through the preflight as a job does (timed), count the block dimensions a width + depth space
finds, then apply uniform 0.3 and 0.5 plans and check what a user would: the pruned model runs with
the right output shape, `save_pruned` / `load_pruned` round-trips bit for bit, ONNX export works,
and the MACs ratio and the measured CPU latency ratio (1 thread, batch 1, eager, interleaved with the
base). Each model runs in its own subprocess with a time limit, so one that hangs or crashes is a row
that says so, not a lost sweep. Rows are appended to bench/results/zoo_sweep.json as they finish and
skipped when present (resumable).

Needs the `vision` extra in the interpreter that runs it (torch 2.14.1 + torchvision 0.29.1):
    python bench/zoo_sweep.py [--models resnet18 ...] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import RESULTS, environment, machine, markdown_table, write

MODELS = ("resnet18", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
          "regnet_y_400mf", "shufflenet_v2_x1_0", "densenet121", "squeezenet1_1", "mnasnet1_0", "convnext_tiny",
          "vit_b_16", "swin_t")
RATIOS = (0.3, 0.5)
SIZE, CLASSES = 224, 1000
RESULT = RESULTS / "zoo_sweep.json"


def sweep_one(name: str) -> dict[str, Any]:
    """One model's row; every failure is caught and recorded with the step it happened in."""
    import torch

    from measurement.latency import LatencyMeter, MeterSettings
    from search_spaces.artifacts import export_onnx, load_pruned, save_pruned
    from search_spaces.kinds import WIDTH
    from search_spaces.plan import ModelIdentity
    from search_spaces.preflight import checked_space
    from search_spaces.zoo import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    row: dict[str, Any] = {"model": name, "step": "build"}
    ident = ModelIdentity(arch=f"torchvision:{name}", num_classes=CLASSES, in_channels=3, input_size=SIZE)
    try:
        model = build_model(ident).eval()
        row["step"] = "space"
        start = time.perf_counter()
        space = checked_space(model, ident, max_ratio=0.9)
        row["space_seconds"] = round(time.perf_counter() - start, 1)
        row["groups"] = sum(d.granularity in WIDTH for d in space.dimensions)
        row["excluded"] = dict(space.excluded)
        row["step"] = "blocks"
        try:
            row["blocks"] = len(checked_space(model, ident, dimensions=("block",)).dimensions)
        except Exception as exc:  # no residual block to drop is an answer, not a failure
            row["blocks"] = 0
            row["blocks_note"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        x = torch.randn(1, 3, SIZE, SIZE)
        meter = LatencyMeter(MeterSettings(threads=1, batch_size=1, warmup=3, repeats=15, max_seconds=20.0))
        for ratio in RATIOS:
            key = f"r{ratio}"
            row["step"] = f"apply {ratio}"
            ratios = space.uniform(ratio)
            pruned = space.apply(ratios).eval()
            with torch.no_grad():
                out = pruned(x)
            flops, params = space.cost(ratios)
            result: dict[str, Any] = {"runs": tuple(out.shape) == (1, CLASSES), "macs_ratio": flops / space.flops,
                                      "params_ratio": params / space.params}
            row["step"] = f"round trip {ratio}"
            with tempfile.TemporaryDirectory() as tmp:
                save_pruned(tmp, pruned, space.plan(ratios, pruned))
                loaded, _ = load_pruned(tmp)
                with torch.no_grad():
                    result["round_trip"] = bool(torch.equal(loaded.eval()(x), out))
                row["step"] = f"onnx {ratio}"
                result["onnx"] = export_onnx(pruned, x, Path(tmp) / "model.onnx") or "exported"
            row["step"] = f"latency {ratio}"
            stats = meter.compare(pruned, model, x)
            result["latency_ratio"], result["latency_ci"] = stats.ratio, [stats.ci_low, stats.ci_high]
            row[key] = result
        row["step"] = "done"
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        row["trace_tail"] = traceback.format_exc().strip().splitlines()[-3:]
    return row


def run_isolated(name: str, timeout: float) -> dict[str, Any]:
    """`sweep_one` in a fresh interpreter: a hang becomes a timeout row, a crash an error row."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"model": name, "step": "timeout", "error": f"no result within {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"model": name, "step": "crash", "error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    row: dict[str, Any] = json.loads(lines[-1])
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def verdict(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"fails at {row['step']}"
    checks = [row[f"r{r}"][k] is True for r in RATIOS for k in ("runs", "round_trip")]
    checks += [row[f"r{r}"]["onnx"] == "exported" for r in RATIOS]
    return "ok" if all(checks) else "partial"


def render(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    table = []
    for r in rows:
        built = "groups" in r
        t: dict[str, Any] = {"model": r["model"], "verdict": verdict(r), "groups": r.get("groups"),
                             "blocks": r.get("blocks"), "excluded": len(r.get("excluded", {})) if built else None,
                             "space s": r.get("space_seconds"), "commit": r.get("commit")}
        for ratio in RATIOS:
            got = r.get(f"r{ratio}", {})
            t[f"{ratio} MACs"] = got.get("macs_ratio")
            t[f"{ratio} latency"] = got.get("latency_ratio")
            t[f"{ratio} runs/round-trip/onnx"] = (
                "/".join("yes" if got.get(k) is True else "no" for k in ("runs", "round_trip"))
                + "/" + ("yes" if got.get("onnx") == "exported" else "no")) if got else None
        t["error"] = r.get("error")
        table.append(t)
    cols = ["model", "verdict", "commit", "groups", "blocks", "excluded", "space s",
            *[f"{ratio} {k}" for ratio in RATIOS for k in ("MACs", "latency", "runs/round-trip/onnx")], "error"]
    excluded = [f"- **{r['model']}**: " + "; ".join(f"`{k}`: {v}" for k, v in sorted(r["excluded"].items()))
                for r in rows if r.get("excluded")]
    return "\n".join([
        "# Model-zoo sweep: torchvision classification models through the job's channel space", "",
        f"CPU {machine(env)}, torchvision {env.get('torchvision')}, "
        "each row's commit in its column; nothing else ran. "
        f"Untrained weights, input 1x3x{SIZE}x{SIZE}, {CLASSES} classes; "
        "uniform plans over the channel groups (blocks: residual blocks a width + depth space can drop); "
        "latency ratio: pruned / base, interleaved, 1 thread, batch 1, eager.", "",
        markdown_table(table, cols), "", "## Excluded layers and why", "", *(excluded or ["none"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    parser.add_argument("--rerun", nargs="*", default=[], help="measure these models again")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(sweep_one(args.one), default=str), flush=True)
        return
    import torchvision

    env = {**environment(), "torchvision": torchvision.__version__}
    rows: list[dict[str, Any]] = json.loads(RESULT.read_text())["rows"] if RESULT.is_file() else []
    rows = [r for r in rows if r["model"] not in args.rerun]
    for name in args.models:
        if any(r["model"] == name for r in rows):
            continue
        rows.append({**run_isolated(name, args.timeout), "commit": env["commit"]})
        print(json.dumps(rows[-1], default=str)[:400], flush=True)
        write("zoo_sweep", {"environment": env, "rows": rows}, render(rows, env))
    write("zoo_sweep", {"environment": env, "rows": rows}, render(rows, env))


if __name__ == "__main__":
    main()
