"""Write a benchmark's results as JSON plus a markdown table, into bench/results/."""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    from measurement.latency import cpu_model

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu_model(), "cores": len(__import__("os").sched_getaffinity(0)), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit}


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


def write(name: str, data: Any, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
