"""Write a benchmark's results as JSON plus a markdown table, into bench/results/."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    from measurement.latency import cpu_isa, cpu_model

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit}


def cpu_name(record: Mapping[str, Any]) -> str:
    """The CPU a result or row names, with its instruction set where it was recorded (older ones did not).
    The model name alone does not identify a machine: two VMs both called "AMD EPYC" timed the same uniform
    plan at 0.54x (`retime_repeat.md`) and 0.605x (`depth_ceiling.json`) of the base."""
    return record.get("cpu", "unknown CPU") + (f" ({record['cpu_isa']})" if record.get("cpu_isa") else "")


def machine(env: Mapping[str, Any]) -> str:
    """One line naming what a result ran on, for every bench's heading."""
    cpu = cpu_name(env)
    parts = [f"{env['cores']} cores" if env.get("cores") else "", f"torch {env['torch']}" if env.get("torch") else "",
             f"commit {env['commit']}" if env.get("commit") else ""]
    return ", ".join([cpu, *(p for p in parts if p)])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: dict[str, str] | None = None) -> str:
    fmt = fmt or {}

    def cell(row: dict[str, Any], col: str) -> str:
        value = row.get(col, "")
        if value is None:
            return "–"
        if isinstance(value, float):
            return format(value, fmt.get(col, ".3f"))
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def median_p90(values: Sequence[float]) -> tuple[float, float]:
    """Median and 90th percentile (the smallest value with at least 90% of the values at or under it)."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def write(name: str, data: Any, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
