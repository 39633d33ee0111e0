"""The job server as users meet it: a real uvicorn process over HTTP, a real SQLite store, real workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import save_file

from search_spaces.artifacts import load_pruned
from service.client import Client
from tests.conftest import job_dict
from tests.live_server import READ_TOKEN, TOKEN, Server


def rest_job(**overrides: Any) -> dict[str, Any]:
    return job_dict(**overrides)


def wait_for(client: Client, job_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["status"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_submit_watch_fetch_and_rebuild(server: Server, tmp_path: Path) -> None:
    client = server.client()
    job = client.submit(rest_job())
    assert job["status"] == "queued" and job["links"]["events"].endswith("/events")
    events = list(client.events(job["id"]))
    kinds = [kind for _, kind, _ in events]
    assert kinds[-1] == "end" and events[-1][2]["status"] == "succeeded"
    assert {"phase", "evaluation", "done"} <= set(kinds)
    ids = [i for i, _, _ in events if i is not None]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    done = client.job(job["id"])
    assert done["result"]["budget_met"] and done["progress"]["phase"] == "artifacts"
    names = client.fetch(job["id"], tmp_path / "fetched")
    assert {"plan.json", "model.safetensors", "model.onnx", "report.json", "history.json"} <= set(names)
    model, plan = load_pruned(tmp_path / "fetched")
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    r = httpx.get(f"{server.url}/api/v1/jobs/{job['id']}/artifacts/model.onnx")
    assert r.headers["content-type"] == "application/octet-stream"
    assert httpx.get(f"{server.url}/api/v1/jobs/{job['id']}/plan").json()["fingerprint"] == plan.fingerprint
    assert len(httpx.get(f"{server.url}/api/v1/jobs/{job['id']}/history").json()) == done["result"]["search"][
        "evaluations"]


def test_sse_resumes_after_last_event_id(server: Server) -> None:
    client = server.client()
    job = client.submit(rest_job())
    wait_for(client, job["id"], {"succeeded"})
    every = [e for e in client.events(job["id"]) if e[0] is not None]
    middle = every[len(every) // 2][0]
    assert middle is not None
    rest = [e for e in client.events(job["id"], after=middle) if e[0] is not None]
    assert [e[0] for e in rest] == [e[0] for e in every if e[0] is not None and e[0] > middle]


def test_invalid_specs_name_every_field(server: Server) -> None:
    bad = rest_job(round_to=0, budget={"metric": "energy", "target": 2})
    r = httpx.post(f"{server.url}/api/v1/jobs", json=bad, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422
    locs = {".".join(str(p) for p in e["loc"]) for e in r.json()["detail"]}
    assert {"body.round_to", "body.budget.metric"} <= locs
    for spec, field, code in ((rest_job(model={"arch": "resnet9000"}), "model.arch", 422),
                              (rest_job(model={"weights": "/etc/passwd"}), "model.weights", 400),
                              (rest_job(model={"weights": "upload:nope"}), "model.weights", 400),
                              (rest_job(budget={"metric": "flops", "target": 0.001}), "budget.target", 400),
                              (rest_job(dataset={"root": "/"}), "dataset.root", 400),
                              (rest_job(device={"name": "cuda:3"}), "device.name", 400)):
        r = httpx.post(f"{server.url}/api/v1/jobs", json=spec, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == code, (field, r.text)
        assert any(".".join(e["loc"][1:]) == field for e in r.json()["detail"]), r.text
    assert server.client().jobs()["total"] == 0  # nothing invalid was queued


def test_auth(server: Server) -> None:
    url = f"{server.url}/api/v1/jobs"
    assert httpx.post(url, json=rest_job()).status_code == 401
    assert httpx.post(url, json=rest_job(), headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.post(url, json=rest_job(), headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert r.status_code == 403 and "only read" in r.json()["detail"]
    assert httpx.get(url).status_code == 200  # reads are open by default
    assert TOKEN not in (server.root / "server.log").read_text()


def test_upload_weights_then_reference_them(server: Server, tmp_path: Path) -> None:
    from search_spaces.zoo import build_model
    from service.spec import ModelSpec

    model = build_model(ModelSpec(arch="small_cnn", num_classes=10, in_channels=1, input_size=8))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    r = httpx.post(f"{server.url}/api/v1/weights", content=(tmp_path / "w.safetensors").read_bytes(), headers=headers)
    assert r.status_code == 201, r.text
    ref = r.json()["reference"]
    assert httpx.post(f"{server.url}/api/v1/weights", content=b"\x80\x04pickle", headers=headers).status_code == 400
    wrong = rest_job(model={"weights": ref, "arch": "resnet20", "input_size": 8})
    r = httpx.post(f"{server.url}/api/v1/jobs", json=wrong, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and "does not fit" in r.text
    job = server.client().submit(rest_job(model={"weights": ref}))
    assert wait_for(server.client(), job["id"], {"succeeded", "failed"})["status"] == "succeeded"


def test_cancel_queued_and_running(server: Server) -> None:
    client = server.client()
    slow = rest_job(strategy={"name": "optuna", "trials": 200, "parallel": 1})
    first, second = client.submit(slow), client.submit(slow)  # one slot: the second waits in the queue
    wait_for(client, first["id"], {"running"})
    assert client.cancel(second["id"])["status"] == "cancelled"
    wait_for(client, first["id"], {"running"})
    deadline = time.monotonic() + 60
    def searching() -> bool:
        progress = client.job(first["id"])["progress"] or {}
        return progress.get("phase") == "search" and bool(progress.get("done"))

    while not searching() and time.monotonic() < deadline:
        time.sleep(0.3)
    client.cancel(first["id"])
    job = wait_for(client, first["id"], {"cancelled"}, timeout=60)
    assert job["error"] == "cancelled by request"
    kinds = [kind for _, kind, _ in client.events(first["id"])]
    assert "evaluation" in kinds and "cancelled" in kinds  # partial history kept


def test_kill_9_mid_job_then_restart_resumes_from_checkpoint(server: Server) -> None:
    client = server.client()
    job = client.submit(rest_job(strategy={"name": "netadapt", "initial_fraction": 0.05, "decay": 1.0,
                                           "short_steps": 2, "max_iterations": 40}))
    deadline = time.monotonic() + 120
    while not (client.job(job["id"])["progress"] or {}).get("checkpointed") and time.monotonic() < deadline:
        time.sleep(0.1)
    # The machine dies: the server and the worker running the job are killed with -9.
    worker = subprocess.run(["pgrep", "-f", f"service.worker {job['id']}"], capture_output=True, text=True)
    server.kill()
    for pid in worker.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(2.5)  # past the heartbeat staleness the test server is configured with
    server.start()
    done = wait_for(server.client(), job["id"], {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    events = list(server.client().events(job["id"]))
    kinds = [kind for _, kind, _ in events]
    assert kinds.count("requeued") == 1 and kinds.count("done") == 1 and kinds.count("resumed") == 1
    resumed_at = next(data["evaluations"] for _, kind, data in events if kind == "resumed")
    after = kinds.index("resumed")
    evaluated_again = [data["id"] for _, kind, data in events[after:] if kind == "evaluation"]
    assert resumed_at > 0 and min(evaluated_again) > resumed_at  # the search continued, nothing redone


def test_progress_counters_reset_with_each_phase() -> None:
    from service.worker import progress_of

    p = progress_of({"type": "phase", "phase": "base_model", "state": "start"}, {})
    p = progress_of({"type": "progress", "phase": "base_model", "done": 40, "total": 40}, p)
    assert p["done"] == 40
    p = progress_of({"type": "phase", "phase": "search", "state": "start"}, {**p, "best_val_acc": 0.5})
    assert p == {"phase": "search", "best_val_acc": 0.5}
    p = progress_of({"type": "evaluation", "done": 2, "planned": 10, "elapsed_s": 4.0, "best_val_acc": 0.7}, p)
    assert (p["done"], p["planned"], p["eta_s"], p["best_val_acc"]) == (2, 10, 16.0, 0.7)


def test_demo_serves_submits_and_fetches(tmp_path: Path) -> None:
    """`make demo`'s path end to end, on a tiny job: server up, job over REST, artifacts fetched."""
    job = tmp_path / "tiny.json"
    job.write_text(json.dumps(rest_job()))
    done = subprocess.run([sys.executable, "-m", "service.demo", "--job", str(job), "--dir", str(tmp_path / "demo"),
                           "--port", "0", "--exit"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dashboard: http://127.0.0.1:" in done.stdout
    report = json.loads((tmp_path / "demo/result/report.json").read_text())
    assert report["budget_met"] is True
    assert (tmp_path / "demo/result/plan.json").is_file()
