"""`prunesearch run / evaluate / train` end to end, and every bad input exits 2 with a message."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from agents.budget import BudgetUnreachableError
from search_spaces.artifacts import load_pruned
from service.cli import main
from service.pipeline import run_job
from service.spec import parse_spec
from tests.conftest import job_dict

pytestmark = pytest.mark.slow  # whole jobs, in process and through the CLI in a subprocess


def write_job(path: Path, **overrides: object) -> Path:
    path.write_text(yaml.safe_dump(job_dict(**overrides)))
    return path


def test_run_job_writes_artifacts_that_rebuild_bit_for_bit(tmp_path: Path) -> None:
    events: list[dict[str, object]] = []
    result = run_job(parse_spec(job_dict()), tmp_path, emit=events.append)
    for name in ("plan.json", "model.safetensors", "model.onnx", "report.json", "history.json", "job.json"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget_met"] and report["ratios"]["flops"] <= 0.5
    assert {"val_acc", "test_acc"} <= set(report["pruned"])
    assert report["base"]["latency"]["n"] == report["latency"]["pairs"] > 0  # the base of the final measurement
    assert report["latency"]["pairs"] % 5 == 0  # whole blocks of `measurement.repeats` interleaved pairs
    assert set(report["phases_seconds"]) >= {"data", "base_model", "search", "final_model", "artifacts"}
    model, plan = load_pruned(tmp_path)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))
    assert plan == result.plan
    kinds = {e["type"] for e in events}
    assert {"phase", "budget", "evaluation", "done"} <= kinds


def test_an_unreachable_latency_budget_names_the_floor_it_timed_and_what_to_set(tmp_path: Path) -> None:
    spec = parse_spec(job_dict(model={"arch": "resnet20", "input_size": 8}, max_ratio=0.3,
                               budget={"metric": "latency_ms", "target": 0.05},
                               strategy={"name": "uniform", "steps": 3},
                               measurement={"max_seconds": 0.5, "repeats": 5}))
    with pytest.raises(BudgetUnreachableError) as caught:
        run_job(spec, tmp_path)
    message = str(caught.value)
    floor = re.search(r"the most pruned plan it timed ran at ([0-9.]+)x", message)
    assert floor and float(floor[1]) > 0.05
    assert "max_ratio above 0.3" in message and '"block" in dimensions (this model has 7 residual' in message


def test_latency_budget_job_measures_and_meets_budget(tmp_path: Path) -> None:
    spec = parse_spec(job_dict(budget={"metric": "latency_ms", "target": 0.7}, evaluation={"uniform_sweep": [0.3, 0.6]},
                               device={"batch_size": 64}, measurement={"max_seconds": 2, "repeats": 10}))
    events: list[dict[str, Any]] = []
    report = run_job(spec, tmp_path, emit=events.append).report
    history = json.loads((tmp_path / "history.json").read_text())
    assert all(h["latency_source"] == "measured" and h["latency_ci"][0] <= h["latency_ratio"] <= h["latency_ci"][1]
               for h in history)
    chosen = [h for h in history if h["meets_budget"]]
    assert chosen and all(h["latency_ci"][1] <= 0.7 * 1.03 for h in chosen)
    assert report["measurement"]["threads"] == 1 and report["measurement"]["batch_size"] == 64
    assert report["lookup_table"]["predicted_latency_ratio"] > 0  # built on the device, calibrated on the base
    lat = report["latency"]  # one measurement behind every number shown
    assert lat["fresh_process"] and lat["ratio"] == report["ratios"]["latency"]
    assert lat["base_ms"] == report["base"]["latency"]["median_ms"]
    assert lat["pruned_ms"] == report["pruned"]["latency_ms"] == report["pruned"]["latency"]["median_ms"]
    assert lat["ci"][0] <= lat["ratio"] <= lat["ci"][1]
    assert report["budget_verdict"] in ("met", "within_tolerance", "missed")
    assert report["budget_met"] == (report["budget_verdict"] == "met")
    sweep = report["uniform_sweep"]  # timed and scored like every candidate, shown, never returned
    assert [p["ratio"] for p in sweep] == [0.3, 0.6]
    assert all(p["latency_source"] == "measured" and p["val_acc"] is not None for p in sweep)
    assert [e["ratio"] for e in events if e["type"] == "sweep_point"] == [0.3, 0.6]
    assert report["selected"]["candidate_id"] not in {p["id"] for p in sweep}
    assert all(h["id"] not in {p["id"] for p in sweep} for h in history)
    leaders = report["selected"]["ranking"]  # the order the final choice tried: the chosen plan among them
    assert leaders and all(c["source"] == "search" and c["val_acc"] is not None for c in leaders)  # uniform
    chosen = report["selected"]
    rescaled = chosen["source"].endswith((", tightened", ", widened"))  # a leader made to fit its re-timing
    assert rescaled or chosen["candidate_id"] in {c["candidate"] for c in leaders}
    competed = {t["candidate"] for t in chosen["rescaled"] if t["outcome"] == "competes"}  # every copy tried
    assert not rescaled or chosen["candidate_id"] in competed


def test_cli_run_then_evaluate(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.yaml", strategy={"name": "global", "steps": 4})
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "service.cli", "run", str(job), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout and "budget flops" in proc.stdout
    assert json.loads((out / "report.json").read_text())["strategy"] == "global"
    proc = subprocess.run([sys.executable, "-m", "service.cli", "evaluate", str(out), "--max-seconds", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    report = json.loads((out / "report.json").read_text())
    assert result["test_acc"] == pytest.approx(report["pruned"]["test_acc"])
    lat = result["latency"]  # the base is re-timed here, interleaved with the pruned model
    assert lat["base_ms"] > 0 and lat["pairs"] >= 15 and lat["ci"][0] <= lat["ratio"] <= lat["ci"][1]
    assert result["measurement"]["threads"] == 1
    assert result["budget_verdict_here"] is None  # a FLOPs budget: nothing to re-time against


@pytest.mark.parametrize(("override", "message"), [
    ({"model": {"arch": "resnet9000"}}, "unknown architecture 'resnet9000'"),
    ({"dataset": {"name": "mnist-9"}}, "unknown dataset 'mnist-9'"),
    ({"max_ratio": 1.2}, "max_ratio"),
    ({"model": {"weights": "nope.safetensors"}}, "file not found"),
    ({"model": {"input_size": 16}, "dataset": {"name": "digits"}}, "model.input_size"),
    ({"keep_layers": ["ghost"]}, "keep_layers"),
    ({"budget": {"metric": "flops", "target": 0.01}}, "unreachable"),
])
def test_bad_input_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          override: dict[str, object], message: str) -> None:
    job = write_job(tmp_path / "job.yaml", **override)
    assert main(["run", str(job), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_weights_and_foreign_plan_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not a safetensors file")
    job = write_job(tmp_path / "job.yaml", model={"weights": str(bad)})
    assert main(["run", str(job), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2  # no job.json / plan.json there
    assert "cannot read job file" in capsys.readouterr().err


def test_unknown_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2


def test_a_failed_phase_ends_with_its_error() -> None:
    from service.pipeline import Phases

    events: list[dict[str, Any]] = []
    phases = Phases(events.append)
    with pytest.raises(ValueError), phases("data"):
        raise ValueError("dataset.root: not found")
    assert events[-1]["state"] == "end" and events[-1]["error"] == "ValueError: dataset.root: not found"
    with phases("space"):
        pass
    assert "error" not in events[-1]
