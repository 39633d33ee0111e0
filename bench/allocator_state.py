"""Why every meter fixes glibc malloc's thresholds: latency depends on what the process did before.

For each allocator mode, a fresh process times ResNet-20 (28x28, batch 32, 1 thread, pinned) and a
uniform-0.5 plan against it twice: right after start, and again after a larger workload (20 forward
passes at batch 128 on 2 threads, like the training and scoring a job's worker does first).
`default`: glibc's adaptive mmap/trim thresholds; `steady`: `measurement.latency.steady_allocator()`.
Run on an idle machine: `python bench/allocator_state.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import environment, machine, markdown_table, write

CHILD = r"""
import json, sys, torch
import measurement.latency as lat
if sys.argv[1] == "default":
    lat.steady_allocator = lambda: False  # the meter keeps glibc's defaults
from measurement.latency import LatencyMeter, MeterSettings
from search_spaces.plan import ModelIdentity
from search_spaces.space import PruningSpace
from search_spaces.zoo import build_model
torch.manual_seed(0)
ident = ModelIdentity(arch="resnet20", num_classes=10, in_channels=1, input_size=28)
space = PruningSpace(build_model(ident).eval(), ident)
meter = LatencyMeter(MeterSettings(batch_size=32, threads=1, max_seconds=8, ci_halfwidth=0.01))
x = meter.example(1, 28)
out = []
for when in ("fresh process", "after a larger workload"):
    if when != "fresh process":
        torch.set_num_threads(2)
        with torch.no_grad():
            for _ in range(20):
                space.base(torch.randn(128, 1, 28, 28))
    s = meter.compare(space.apply(space.uniform(0.5)).eval(), space.base, x)
    out.append({"when": when, "ratio": s.ratio, "ci": [s.ci_low, s.ci_high], "base_ms": s.base.median_ms,
                "pruned_ms": s.candidate.median_ms})
print(json.dumps(out))
"""


def main() -> None:
    rows: list[dict[str, Any]] = []
    root = Path(__file__).resolve().parents[1]
    for mode in ("default", "steady"):
        done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, cwd=root,
                              check=True)
        for r in json.loads(done.stdout.strip().splitlines()[-1]):
            rows.append({"allocator": mode, **r})
            print(rows[-1], flush=True)
    env = environment()
    md = [f"# Allocator state and latency ({machine(env)})", "",
          "ResNet-20 28x28, batch 32, 1 thread, pinned; uniform 0.5 plan vs base; each mode in a fresh process.", "",
          markdown_table(rows, ["allocator", "when", "ratio", "base_ms", "pruned_ms"])]
    write("allocator_state", {"environment": env, "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
