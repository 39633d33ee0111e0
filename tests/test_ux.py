"""What a newcomer meets first: CLI verbs and messages, progress bars and logs, REST validation messages,
datasets a server cannot load, metrics a Prometheus `rate()` can use (issue 17)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save_file
from structlog.testing import capture_logs

from service.cli import main
from service.config import Settings
from service.progress import EventBars, configure_logging
from tests.conftest import job_dict
from tests.live_server import TOKEN, Server

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FMNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=120)


# -- CLI ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_version_and_help_texts_show_choices_and_defaults() -> None:
    version = cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"prunesearch \d+\.\d+\.\d+\S*\n", version.stdout)
    serve = cli("serve", "--help").stdout
    for flag, default in (("--port", "8000"), ("--host", "127.0.0.1"), ("--db", "sqlite:///prunesearch.db"),
                          ("--artifact-dir", "artifacts")):
        assert flag in serve and f"default: {default}" in " ".join(serve.split()), (flag, serve)
    assert "PRUNESEARCH_PORT" in serve
    train = " ".join(cli("train", "--help").stdout.split())
    assert "resnet20" in train and "small_cnn" in train and "digits" in train and "fashion-mnist" in train
    assert "(default: 15" in train  # epochs
    bad = cli("train", "--model", "resnet9000", "--dataset", "digits", "--out", "x")
    assert bad.returncode == 2 and "choose from" in bad.stderr and "resnet20" in bad.stderr


def test_train_on_digits_with_default_val_size(tmp_path: Path) -> None:
    """The default validation split is a fraction of train: digits (1,438 train images) no longer fails."""
    assert main(["train", "--model", "small_cnn", "--dataset", "digits", "--epochs", "0.05", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["dataset"]["val_size"] == 143  # 10% of the 1,438 images left after the test split


@pytest.mark.slow
def test_unreachable_server_is_named_with_a_distinct_exit_code() -> None:
    proc = cli("list", "--server", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert proc.returncode == 3, proc.stderr
    assert "cannot reach server at http://127.0.0.1:9:" in proc.stderr and "HTTP 0" not in proc.stderr
    watch = cli("watch", "deadbeef", "--server", "http://127.0.0.1:9")  # the event stream never connected
    assert watch.returncode == 3 and "cannot reach server" in watch.stderr


def test_upload_then_submit_wait_prints_the_result(server: Server, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from search_spaces.zoo import build_model
    from service.spec import ModelSpec

    model = build_model(ModelSpec(arch="small_cnn", num_classes=10, in_channels=1, input_size=8))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    common = ["--server", server.url, "--token", TOKEN]
    assert main(["upload", str(tmp_path / "w.safetensors"), *common]) == 0
    reference = capsys.readouterr().out.strip()
    assert re.fullmatch(r"upload:[0-9a-f]{32}", reference)
    job = tmp_path / "job.json"
    job.write_text(json.dumps(job_dict(model={"weights": reference}, finetune={"final_epochs": 1})))
    assert main(["submit", str(job), "--wait", "--quiet", *common]) == 0
    out = capsys.readouterr().out
    assert "after fine-tune" in out and "speed-up:" in out and re.search(r"budget flops <= 0\.500 x base: met", out)
    assert json.loads(out.strip().splitlines()[-1])["status"] == "succeeded"


def test_random_init_weights_warn_at_submit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps(job_dict(model={"weights": None})))
    assert main(["--json-logs", "submit", str(job), "--server", "http://127.0.0.1:9"]) == 3  # warned, then sent
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert any(r["event"] == "model.random_init" and r["level"] == "warning" for r in records), records


# -- progress bars and logs -----------------------------------------------------------------------


def bisection_events(n: int = 6) -> list[dict[str, Any]]:
    """What a uniform search emits: costs and verdicts, no accuracy until the final plan."""
    return [{"type": "evaluation", "done": i, "planned": n, "flops": 1000 - 100 * i, "params": 10,
             "val_acc": None, "latency_ratio": None, "meets_budget": 1000 - 100 * i <= 600, "best_val_acc": None,
             "elapsed_s": 2.0 * ((i + 1) // 2)} for i in range(1, n + 1)]  # batches of two, 2 s each


def test_search_bar_shows_the_best_met_plan_and_sane_rates(capsys: pytest.CaptureFixture[str]) -> None:
    bars = EventBars()
    bars({"type": "budget", "metric": "flops", "limit": 600, "base": 1000, "target_ratio": 0.6, "tolerance": 0.0})
    bars({"type": "phase", "phase": "search", "state": "start"})
    for event in bisection_events():
        bars(event)
    bar = bars.bars["search"]
    bar.refresh()
    assert bar.postfix is not None and "best=flops x0.600" in bar.postfix and "None" not in bar.postfix
    assert "table_only" not in bar.postfix  # nothing was ruled out by a lookup table
    bars({**bisection_events()[0], "done": 7, "planned": 8, "meets_budget": False, "tag": {"prefiltered": True}})
    bar.refresh()
    assert "table_only=1" in (bar.postfix or "")  # Optuna's pre-filtered trials: counted, and said to be
    err = capsys.readouterr().err
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d.,]+)it/s", err)]
    assert all(r < 1000 for r in rates), err  # the batch arrived at once: no "1,103,764 it/s"
    assert "1.00it/s" in err  # the rate the events' own clock gives: 6 evaluations in 6 s
    bars({"type": "phase", "phase": "search", "state": "end", "seconds": 0.1})


GLUE_PROBE = """
import logging, structlog
from service.progress import EventBars, configure_logging
configure_logging("INFO")
bars = EventBars()
bars({"type": "progress", "phase": "search", "done": 1, "total": 10})
bars.bars["search"].refresh()  # a bar is on screen
structlog.get_logger().info("glue.probe", x=1)
logging.getLogger("some.library").warning("stdlib.probe")
bars({"type": "phase", "phase": "search", "state": "end", "seconds": 1})
"""


@pytest.mark.slow
def test_log_lines_never_glue_onto_a_bar() -> None:
    err = subprocess.run([sys.executable, "-c", GLUE_PROBE], capture_output=True, text=True, timeout=60).stderr
    for probe in ("glue.probe", "stdlib.probe", "phase.done"):
        line = next(part for part in re.split(r"[\r\n]", err) if probe in part)
        assert "1/10" not in line, repr(err)  # the bar was cleared before the line was written


def test_failed_phase_is_reported_as_failed() -> None:
    from service.worker import progress_of

    with capture_logs() as logs:
        EventBars(enabled=False)({"type": "phase", "phase": "data", "state": "end", "seconds": 0.2,
                                  "error": "DatasetError: dataset.root: not found"})
    assert [(e["event"], e["log_level"]) for e in logs] == [("phase.failed", "error")]
    assert "not found" in logs[0]["error"]
    progress = progress_of({"type": "phase", "phase": "data", "state": "end", "error": "boom"}, {"phase": "data"})
    assert progress["failed_phase"] == "data"


QUIET_PROBE = """
import logging
from service.progress import configure_logging
configure_logging("INFO")
print(*(logging.getLogger(n).isEnabledFor(logging.INFO) for n in ("httpx", "httpcore", "alembic", "service")))
print(*(logging.getLogger(n).isEnabledFor(logging.WARNING) for n in ("httpx", "httpcore", "alembic")))
"""


@pytest.mark.slow
def test_noisy_library_loggers_are_quiet() -> None:
    """Fresh process, as the CLI starts: httpx/httpcore (every request) and alembic (plugin lines) stay
    below INFO, warnings still pass, our own INFO logs still show."""
    out = subprocess.run([sys.executable, "-c", QUIET_PROBE], capture_output=True, text=True, timeout=60).stdout
    assert out.split("\n")[:2] == ["False False False True", "True True True"], out


# -- REST -----------------------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    """The app in-process (no job runner): validation answers need no worker."""
    from service.api.app import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", artifact_dir=tmp_path / "artifacts",
                        tokens={"ci": TOKEN}, scheduler="off", max_upload_bytes=1024,
                        model_factories={"shuffle": "tests.test_zoo_sweep:ShuffleNet"},
                        dataset_roots={"fashion-mnist": str(FMNIST), "cifar10": str(tmp_path / "no-cifar")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # starlette's own note about its test client
        client = TestClient(create_app(settings, run_jobs=False))
    with client:
        yield client


def locs(response: Any) -> set[str]:
    return {".".join(str(p) for p in e["loc"][1:]) for e in response.json()["detail"]}


def test_the_catalog_serves_each_vocabulary_from_its_one_declaration(api: TestClient) -> None:
    """The dashboard reads strategies, criteria, kinds, phases and event kinds from here, never a copy."""
    from agents.events import EVENT_KINDS
    from agents.strategies import strategy_models
    from search_spaces.kinds import GRANULARITIES, SPACE_KINDS, criteria_for
    from service.pipeline import PHASES

    cat = api.get("/api/v1/catalog").json()
    assert set(cat["strategies"]) == set(strategy_models())
    assert set(cat["strategies"]["optuna"]) >= {"trials", "warm_start"}  # the parameters, from the model
    assert cat["events"] == EVENT_KINDS
    assert cat["phases"] == [{"name": n, "weight": w} for n, w in PHASES]
    assert cat["dimensions"] == list(SPACE_KINDS)
    assert cat["criteria_by_kind"] == {kind: criteria_for(kind) for kind in SPACE_KINDS}
    assert cat["granularities"]["head"] == {"kind": "channel", "unit": "heads", "width": True, "binary": False,
                                            "sparse": False}
    assert set(cat["granularities"]) == set(GRANULARITIES)
    assert {g["kind"] for g in cat["granularities"].values()} == set(SPACE_KINDS)  # every kind finds one


def test_the_catalog_previews_a_model_s_space_with_the_layers_it_leaves_unpruned(api: TestClient) -> None:
    from tests.test_zoo_sweep import space_of

    r = api.get("/api/v1/catalog/space", params={"arch": "factory:shuffle", "num_classes": 5, "in_channels": 3,
                                                 "input_size": 8}, headers=AUTH)
    assert r.status_code == 200, r.text
    want = space_of("shuffle")  # the space a job builds: the same dimensions and exclusions, with the reason
    assert [d["name"] for d in r.json()["dimensions"]] == [d.name for d in want.dimensions]
    assert r.json()["excluded"] == want.excluded and want.excluded
    r = api.get("/api/v1/catalog/space", params={"arch": "resnet20", "in_channels": 1, "input_size": 28,
                                                 "dimensions": ["channel", "block"]}, headers=AUTH)
    kinds = {d["granularity"] for d in r.json()["dimensions"]}
    assert r.status_code == 200 and kinds == {"channel", "block"} and r.json()["excluded"] == {}
    r = api.get("/api/v1/catalog/space", params={"arch": "resnet9000"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "arch"], r.text
    r = api.get("/api/v1/catalog/space", params={"arch": "resnet20", "dimensions": "heads"}, headers=AUTH)
    assert r.status_code == 422 and "dimensions" in r.text, r.text


def test_one_422_names_every_invalid_field(api: TestClient) -> None:
    both = job_dict(model={"arch": "resnet9000"}, round_to=0, budget={"metric": "energy", "target": 0.5})
    r = api.post("/api/v1/jobs", json=both, headers=AUTH)
    assert r.status_code == 422 and {"model.arch", "round_to", "budget.metric"} <= locs(r), r.text
    catalog_only = job_dict(model={"arch": "resnet9000"}, dataset={"name": "mnist-9"})
    r = api.post("/api/v1/jobs", json=catalog_only, headers=AUTH)
    assert r.status_code == 422 and {"model.arch", "dataset.name"} <= locs(r), r.text


def test_a_yaml_body_gets_a_short_message_not_an_echo(api: TestClient) -> None:
    yaml_body = b"name: secret-name\nmodel:\n  arch: resnet20\n"
    for content_type in ("application/json", "application/yaml"):
        r = api.post("/api/v1/jobs", content=yaml_body, headers={**AUTH, "Content-Type": content_type})
        assert r.status_code == 422
        assert "secret-name" not in r.text and "JSON object" in r.text, r.text


def test_a_dataset_the_server_cannot_load_is_a_400_naming_the_setting(api: TestClient) -> None:
    r = api.post("/api/v1/jobs", json=job_dict(dataset={"name": "cifar10"}, model={"in_channels": 3}), headers=AUTH)
    assert r.status_code == 400 and "dataset.name" in locs(r), r.text
    assert "PRUNESEARCH_DATASET_ROOTS" in r.text
    if (FMNIST / "train-images-idx3-ubyte.gz").is_file():  # the configured root is found
        ok = job_dict(dataset={"name": "fashion-mnist"}, model={"input_size": 28})
        assert api.post("/api/v1/jobs", json=ok, headers=AUTH).status_code == 201


def test_413_uses_no_deprecated_status_name(api: TestClient) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = api.post("/api/v1/weights", content=b"x" * 4096,
                     headers={**AUTH, "Content-Type": "application/octet-stream"})
        big = api.post("/api/v1/jobs", content=b"{" + b" " * 400_000 + b"}",
                       headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and big.status_code == 413
    assert not [w for w in caught if "HTTP_413" in str(w.message)], [str(w.message) for w in caught]


def test_metrics_have_counters_for_rate(api: TestClient) -> None:
    store = api.app.state.store  # type: ignore[attr-defined]
    job = store.create_job(job_dict(), "m", "ci")
    for i in range(3):
        store.append_event(job.id, {"type": "evaluation", "done": i + 1})
    store.claim_next("w")
    store.finish(job.id, "succeeded", result={}, worker="w")
    families = {f.name: f for f in text_string_to_metric_families(api.get("/api/v1/metrics").text)}
    assert families["prunesearch_evaluations"].type == "counter"
    (total,) = [s for s in families["prunesearch_evaluations"].samples if s.name == "prunesearch_evaluations_total"]
    assert total.value == 3
    finished = {s.labels["status"]: s.value for s in families["prunesearch_jobs_finished"].samples
                if s.name == "prunesearch_jobs_finished_total"}
    assert finished == {"succeeded": 1, "failed": 0, "cancelled": 0}
    assert families["prunesearch_jobs"].type == "gauge"  # the gauges stay


# -- datasets -------------------------------------------------------------------------------------


def test_a_root_for_a_dataset_that_reads_none_is_warned_about() -> None:
    from search_spaces.datasets import load_dataset
    from service.spec import DatasetSpec

    with capture_logs() as logs:
        load_dataset(DatasetSpec(name="digits", root="/etc/passwd", val_size=100))
    assert any(e["event"] == "dataset.root_ignored" and e["log_level"] == "warning" and e["root"] == "/etc/passwd"
               for e in logs)
    with capture_logs() as logs:
        load_dataset(DatasetSpec(name="digits", val_size=100))
    assert not logs


def test_stream_captures_are_unaffected() -> None:
    """configure_logging writes to whatever stderr is now, also through the bar-aware stream."""
    configure_logging("INFO")
    buffer = io.StringIO()
    old, sys.stderr = sys.stderr, buffer
    try:
        structlog.get_logger().info("late.stream")
    finally:
        sys.stderr = old
    assert "late.stream" in buffer.getvalue()
