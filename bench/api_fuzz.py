"""API fuzzing: schemathesis, every phase, against a real server process on loopback.

The CI test (tests/test_api_fuzz.py) runs a few seeded examples per operation with the two checks
that gate (no 5xx, responses match their schema). This runs all phases (examples, coverage,
fuzzing, stateful) with many more examples and every check, and writes bench/results/api_fuzz.md:
per operation the cases sent, the statuses seen and the slowest answer, then each failure. The
gating checks must find nothing; the rest are findings to read (undocumented statuses and the like).

    .venv/bin/python bench/api_fuzz.py --max-examples 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import RESULTS, environment, machine, markdown_table
from tests.live_server import stop
from tests.test_api_fuzz import CHECKS, fuzz_server, schemathesis_command

GATING = set(CHECKS.split(","))
ALL_CHECKS = ("not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,"
              "response_headers_conformance,negative_data_rejection,missing_required_header,unsupported_method,"
              "ignored_auth")


def summarise(report: Path) -> dict[str, Any]:
    """Per-operation counts, failures by check, and errors (timeouts, broken responses) from the NDJSON report."""
    ops: dict[str, dict[str, Any]] = defaultdict(lambda: {"cases": 0, "statuses": Counter(), "max_ms": 0.0})
    failures: dict[tuple[str, str, str], int] = Counter()
    errors: list[dict[str, str]] = []
    for line in report.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if "NonFatalError" in event:
            err = event["NonFatalError"]
            errors.append({"operation": err.get("label", ""), "phase": err.get("phase", ""),
                           "error": f"{err['value'].get('type')}: {err['value'].get('message', '')[:160]}"})
        if "ScenarioFinished" not in event:
            continue
        recorder = event["ScenarioFinished"].get("recorder", {})
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response") or {}
            request = interaction["request"]
            label = recorder.get("label") or request["method"]
            op = ops[label]
            op["cases"] += 1
            op["statuses"][str(response.get("status_code", "none"))] += 1
            op["max_ms"] = max(op["max_ms"], 1000 * float(response.get("elapsed") or 0))
        for checks in recorder.get("checks", {}).values():
            for check in checks:
                if check.get("status") == "failure":
                    info = (check.get("failure_info") or {}).get("failure", {})
                    key = (check["name"], info.get("operation", recorder.get("label", "")),
                           f"{info.get('title', '')}: {info.get('message', '')}".replace("\n", " ")[:200])
                    failures[key] += 1
    return {"operations": ops, "failures": failures, "errors": errors}


def render(summary: dict[str, Any], args: argparse.Namespace, seconds: float, exit_code: int) -> str:
    ops = [{"operation": label, "cases": op["cases"], "max ms": op["max_ms"],
            "statuses": ", ".join(f"{s}×{n}" for s, n in sorted(op["statuses"].items()))}
           for label, op in sorted(summary["operations"].items())]
    gating = [(k, n) for k, n in summary["failures"].items() if k[0] in GATING]
    other = [(k, n) for k, n in summary["failures"].items() if k[0] not in GATING]
    env = environment()
    lines = [
        "# API fuzzing (schemathesis)", "",
        f"`python bench/api_fuzz.py --max-examples {args.max_examples} --phases {args.phases} --seed {args.seed}`: "
        f"a real server on loopback (SQLite, one active job per token), every operation of the served OpenAPI, "
        f"{sum(o['cases'] for o in ops)} requests in {seconds:.0f} s; schemathesis exit code {exit_code}.",
        f"Machine: {machine(env)}.", "",
        f"**Gating checks** ({', '.join(sorted(GATING))}): "
        + ("no failure." if not gating else f"{sum(n for _, n in gating)} FAILURES (below)."),
        f"**Errors** (timeouts, broken responses): {len(summary['errors']) or 'none'}.", "",
        "Expected informational findings: `ignored_auth` / `missing_required_header` on GETs (reads are open by "
        "default, PRUNESEARCH_OPEN_READS=true); `unsupported_method` answers 405 by design.", "",
        "## Operations", "", markdown_table(ops, ["operation", "cases", "statuses", "max ms"], {"max ms": ".0f"}), "",
    ]
    for title, rows in (("Gating failures", gating), ("Other findings (informational checks)", other)):
        lines += [f"## {title}", ""]
        lines += [markdown_table([{"check": k[0], "operation": k[1], "finding": k[2], "count": n} for k, n in rows],
                                 ["check", "operation", "finding", "count"]) if rows else "none", ""]
    lines += ["## Errors", ""]
    lines += [markdown_table(summary["errors"], ["operation", "phase", "error"]) if summary["errors"] else "none"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=30)
    parser.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS / "api_fuzz.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="api-fuzz-") as tmp:
        root = Path(tmp)
        srv = fuzz_server(root)
        try:
            report = root / "fuzz.ndjson"
            command = schemathesis_command(srv.url, report, max_examples=args.max_examples, phases=args.phases,
                                           seed=args.seed, checks=ALL_CHECKS, timeout_s=args.request_timeout)
            start = time.monotonic()
            done = subprocess.run(command, capture_output=True, text=True, cwd=root)
            seconds = time.monotonic() - start
            summary = summarise(report)
        finally:
            stop(srv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(summary, args, seconds, done.returncode) + "\n")
    gating = sum(n for k, n in summary["failures"].items() if k[0] in GATING)
    print(f"{args.out}: {gating} gating failures, {len(summary['errors'])} errors, {seconds:.0f} s")
    return 1 if gating or summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
