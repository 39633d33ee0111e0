"""Re-time a pruned model against its base in a fresh process: the latency a user is told.

A process that has searched, trained and timed dozens of candidates is not the process a user deploys
in: allocator state, thread pools and caches carry its history, and plans accepted at the edge of a
budget re-measured 3-4% over it elsewhere. So the final number comes from a new interpreter that
rebuilds the pruned model from its artifact files (plan + safetensors, nothing unpickled) and the
base architecture from the zoo, and times them interleaved. Weight values do not change the speed of
dense kernels, so the base is timed with fresh weights. `prunesearch evaluate` runs the same code.

The same process can time a plan against another plan instead of the base (`reference`, which the
request names): how much faster a tightened plan runs than the one it came from, without the history of
a process that has timed before (bench/results/tighten_fidelity_mobilenetv2_b32.md).

    python -m measurement.retime FOLDER   # FOLDER holds plan.json, model.safetensors, retime.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from measurement.latency import LatencyMeter, LatencyStats, MeterSettings, RatioStats

if TYPE_CHECKING:
    from search_spaces.plan import Plan

REQUEST_FILE = "retime.json"
REFERENCE_DIR = "reference"  # where `retime_files` puts a reference artifact to time against instead of the base


class RetimeError(RuntimeError):
    """The fresh timing process failed; its message carries the child's last error line."""


def ratio_from_dict(d: Mapping[str, Any]) -> RatioStats:
    return RatioStats(**{**d, "candidate": LatencyStats(**d["candidate"]), "base": LatencyStats(**d["base"])})


def compare_artifact(folder: str | Path, settings: MeterSettings, factories: Mapping[str, str] | None = None,
                     max_seconds: float | None = None, reference: str | Path | None = None) -> RatioStats:
    """Rebuild the artifact in `folder` and its base architecture (or the artifact in `reference`), and time
    them interleaved (this process)."""
    from search_spaces.artifacts import load_pruned

    pruned, plan = load_pruned(folder, factories)
    other = load_pruned(reference, factories)[0] if reference is not None else None
    return compare_pruned(pruned, plan, settings, factories, max_seconds, other)


def compare_pruned(pruned: nn.Module, plan: Plan, settings: MeterSettings, factories: Mapping[str, str] | None = None,
                   max_seconds: float | None = None, reference: nn.Module | None = None) -> RatioStats:
    """Time a rebuilt pruned model interleaved against a fresh build of its base architecture, or `reference`."""
    from search_spaces.zoo import build_model

    base = reference if reference is not None else build_model(plan.model, factories).eval()
    meter = LatencyMeter(settings)
    example = meter.example(plan.model.in_channels, plan.model.input_size)
    return meter.compare(pruned, base, example, max_seconds=max_seconds)


def retime_files(meter: LatencyMeter, files: Mapping[str, bytes], factories: Mapping[str, str] | None,
                 max_seconds: float, reference: Mapping[str, bytes] | None = None, timeout_s: float = 900.0
                 ) -> RatioStats:
    """Write an artifact's files to a temporary folder and time it in a new interpreter, against its base or
    against the `reference` artifact's files. Takes the meter first so that it runs through a job's
    `time_on` wherever its candidates are timed (a Ray node too)."""
    with tempfile.TemporaryDirectory(prefix="prunesearch-retime-") as tmp:
        folder = Path(tmp)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        if reference is not None:
            (folder / REFERENCE_DIR).mkdir()
            for name, data in reference.items():
                (folder / REFERENCE_DIR / name).write_bytes(data)
        request = {"settings": asdict(meter.settings), "factories": dict(factories or {}), "max_seconds": max_seconds,
                   "reference": REFERENCE_DIR if reference is not None else None}
        (folder / REQUEST_FILE).write_text(json.dumps(request))
        proc = subprocess.run([sys.executable, "-m", "measurement.retime", str(folder)], capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RetimeError(f"fresh-process timing failed (exit {proc.returncode}): {last}")
    return ratio_from_dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    request = json.loads((folder / REQUEST_FILE).read_text())
    cores = request["settings"].get("cores")
    settings = MeterSettings(**{**request["settings"], "cores": tuple(cores) if cores else None})
    reference = folder / request["reference"] if request.get("reference") else None
    stats = compare_artifact(folder, settings, request["factories"], request["max_seconds"], reference)
    print(json.dumps(asdict(stats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
