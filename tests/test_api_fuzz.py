"""Schemathesis against the served OpenAPI of a real server process: no 5xx, every response matches its schema.

A small, seeded run for CI; `bench/api_fuzz.py` runs every phase with many more examples.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.live_server import TOKEN, Server, started, stop

CHECKS = "not_a_server_error,response_schema_conformance"


def schemathesis_command(url: str, report: Path, *, max_examples: int, phases: str, seed: int,
                         checks: str = CHECKS, timeout_s: float = 30) -> list[str]:
    """The `st run` command line both this test and the bench use (the token is passed, never printed)."""
    st = Path(sys.executable).with_name("st")
    return [str(st), "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}", "--checks", checks,
            "--phases", phases, "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1",
            "--request-timeout", str(timeout_s), "--generation-database", "none", "--no-color",
            "--report", "ndjson", "--report-ndjson-path", str(report)]


def fuzz_server(root: Path) -> Server:
    """One active job per token: the demo example in the OpenAPI schema runs, then further submissions get 429."""
    return started(root, PRUNESEARCH_MAX_ACTIVE_JOBS_PER_TOKEN="1")


def operations_tested(report: Path) -> set[str]:
    labels: set[str] = set()
    for line in report.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if "ScenarioFinished" in event:
            label = event["ScenarioFinished"].get("recorder", {}).get("label")
            if label:
                labels.add(label)
    return labels


def test_openapi_fuzz_finds_no_server_error_and_no_schema_mismatch(tmp_path: Path) -> None:
    srv = fuzz_server(tmp_path)
    try:
        report = tmp_path / "fuzz.ndjson"
        done = subprocess.run(schemathesis_command(srv.url, report, max_examples=5, phases="examples,fuzzing", seed=1),
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        tested = operations_tested(report)
        assert {"POST /api/v1/jobs", "POST /api/v1/weights", "GET /api/v1/jobs/{job_id}/artifacts/{name}"} <= tested
        assert TOKEN not in done.stdout + report.read_text()  # schemathesis filters the Authorization header
    finally:
        stop(srv)
