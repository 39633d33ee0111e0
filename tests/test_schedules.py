"""Scheduled searches: real server processes over HTTP, real APScheduler, a real SQLite database.

Near-future triggers use the 6-field cron (seconds first). A cron naming one second of the day
("S M H * * *") fires exactly once within a test; "*/2 * * * * *" fires every two seconds.
Checkpoints are real small-CNN safetensors: a trained one and an untrained (worse) one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from measurement.training import fit
from search_spaces.plan import ModelIdentity
from search_spaces.weights import save_weights
from search_spaces.zoo import build_model
from service.config import Settings
from service.schedules import cron
from service.schedules.compare import compare
from service.schedules.launch import launch
from service.schedules.runtime import Runtime
from service.schedules.scheduler import SchedulerHost
from service.store import JobStore
from tests.conftest import job_dict, synthetic_splits
from tests.live_server import READ_TOKEN, TOKEN, Server, started, stop

IDENTITY = ModelIdentity(arch="small_cnn", num_classes=10, in_channels=1, input_size=8)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- helpers -----------------------------------------------------------------------------------------


def write_checkpoint(path: Path, trained: bool) -> Path:
    """A small-CNN checkpoint for job_dict's synthetic data: trained (~45 % test accuracy) or untrained (~10 %)."""
    torch.manual_seed(0)
    model = build_model(IDENTITY)
    if trained:
        fit(model, synthetic_splits(1, 8, 256).train, "synthetic", 3, 0.1, 64, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model.eval(), path, {"arch": "small_cnn"})
    return path


def template(**overrides: Any) -> dict[str, Any]:
    job = job_dict(**overrides)
    job["model"].pop("weights")
    return job


def one_shot_cron(at: datetime) -> str:
    """A 6-field cron that fires once a day, at `at` (UTC): within a test, exactly once."""
    return f"{at.second} {at.minute} {at.hour} * * *"


def soon(seconds: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).replace(microsecond=0)


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def runs(srv: Server, schedule_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{srv.url}/api/v1/schedules/{schedule_id}/runs")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def create(srv: Server, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{srv.url}/api/v1/schedules", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


class Webhook:
    """A real HTTP endpoint on loopback that records the JSON bodies posted to it."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[dict[str, Any]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """One server for the single-server tests: checkpoints under an allowed root, a fast scheduler tick."""
    root = tmp_path_factory.mktemp("sched")
    ckpts = root / "ckpts"
    ckpts.mkdir()
    srv = started(root, PRUNESEARCH_SCHEDULE_WEIGHTS_ROOTS=json.dumps([str(ckpts)]),
                  PRUNESEARCH_SCHEDULE_TICK_S="0.5")
    yield srv, ckpts
    stop(srv)


# -- pure pieces -------------------------------------------------------------------------------------


def test_cron_fields_follow_crontab() -> None:
    monday = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)  # a Monday
    weekday_fires = cron.fires_between("0 2 * * 1-5", "UTC", monday, monday + timedelta(days=7), 10)
    assert [f.strftime("%a") for f in weekday_fires] == ["Tue", "Wed", "Thu", "Fri", "Mon"]  # APScheduler's 0=Mon fixed
    for sunday in ("0", "7", "sun"):
        fire = cron.next_fire(f"0 2 * * {sunday}", "UTC", monday)
        assert fire is not None and fire.strftime("%a") == "Sun"
    berlin = cron.next_fire("0 2 * * *", "Europe/Berlin", monday)
    assert berlin is not None and berlin.astimezone(timezone.utc).hour == 1  # 02:00 CET
    assert cron.next_fire("*/15 * * * * *", "UTC", monday) == monday + timedelta(seconds=15)
    assert cron.latest_fire("0 2 * * *", "UTC", monday) == monday.replace(hour=2)
    for bad in ("* * *", "61 * * * *", "0 2 * * 9"):
        with pytest.raises(cron.CronError):
            cron.trigger(bad, "UTC")
    with pytest.raises(cron.CronError, match="time zone"):
        cron.zone("Mars/Olympus")


def result(test_acc: float, latency_ms: float, base_acc: float = 0.9, budget_met: bool = True) -> dict[str, Any]:
    """A job result summary in the shape the worker stores."""
    return {"budget": {"metric": "flops"}, "budget_met": budget_met, "search": {"evaluations": 6},
            "base": {"test_acc": base_acc, "val_acc": base_acc, "latency": {"median_ms": 2.0}},
            "pruned": {"test_acc": test_acc, "val_acc": test_acc, "latency_ms": latency_ms},
            "ratios": {"latency": latency_ms / 2.0, "flops": 0.5}}


def test_compare_flags_each_threshold() -> None:
    limits = {"accuracy_drop": 0.02, "latency_rise": 0.1, "budget_miss": True}
    same, flags = compare(result(0.80, 1.0), result(0.80, 1.0), limits, {"a": 0.5}, {"a": 0.5})
    assert flags == [] and same["plan"]["changed"] is False
    comparison, flags = compare(result(0.70, 1.2, budget_met=False), result(0.80, 1.0), limits,
                                {"a": 0.6, "b": 0.1}, {"a": 0.5, "b": 0.1})
    assert set(flags) == {"pruned_accuracy_drop", "pruned_latency_rise", "budget_miss"}
    assert comparison["pruned"]["accuracy"]["delta"] == pytest.approx(-0.10)
    assert comparison["plan"]["groups"] == {"a": {"previous": 0.5, "current": 0.6}}
    _, flags = compare(result(0.79, 1.05), result(0.80, 1.0), limits)  # within the thresholds
    assert flags == []
    _, flags = compare(result(0.5, 5.0, budget_met=False), None, {**limits, "budget_miss": False})
    assert flags == []  # first run: nothing to compare against, budget miss switched off


def test_optuna_warm_start_is_the_second_trial(tmp_path: Path) -> None:
    """The previous run's plan is enqueued right after the uniform baseline; out-of-range ratios are
    clipped, unknown groups dropped, and a plan naming no group of this model is skipped with an event."""
    from agents.base import SearchContext
    from agents.budget import Budget
    from agents.optuna_search import OptunaAgent
    from tests.conftest import make_space

    space = make_space("small_cnn", 8, round_to=2)
    names = [d.name for d in space.dimensions]
    plan = {names[0]: 0.3, names[-1]: 0.99, "gone.layer": 0.5}
    events: list[dict[str, Any]] = []
    ctx = SearchContext(space, Budget("flops", 0.5 * space.flops, float(space.flops)), 0, emit=events.append,
                        workdir=tmp_path)
    agent = OptunaAgent(ctx, trials=4, parallel=2, warm_start=plan)
    first, second = agent.suggest()
    assert first.ratios == space.uniform(agent.uniform_ratio)
    expected = {names[0]: 0.3, names[-1]: space.dimensions[-1].max_ratio}
    assert {k: second.ratios[k] for k in expected} == pytest.approx(expected)
    assert agent.summary()["warm_start"] == pytest.approx(expected)
    assert {"type": "warm_start", "groups": 2, "of": len(names)} in events
    skipped = OptunaAgent(SearchContext(space, ctx.budget, 0, emit=events.append, workdir=tmp_path / "b"),
                          trials=4, warm_start={"gone.layer": 0.5})
    assert skipped.warm_start is None and events[-1]["type"] == "warm_start_skipped"


def test_netadapt_warm_start_confirms_the_previous_plan_first(tmp_path: Path) -> None:
    """A previous plan that still meets the budget ends the search after one evaluation; one that does
    not is where the iterations continue from (never back at the unpruned base)."""
    from agents.base import SearchContext
    from agents.budget import Budget
    from agents.driver import run_search
    from agents.netadapt import NetAdaptAgent
    from service.execution.evaluation import AccuracyRecipe, LocalEvaluator
    from tests.conftest import make_space

    space = make_space("small_cnn", 8, round_to=2)
    data = synthetic_splits(1, 8)
    budget = Budget("flops", 0.5 * space.flops, float(space.flops))
    evaluate = LocalEvaluator(space, data, budget, AccuracyRecipe(recalibration_batches=1), None)
    fits = space.uniform(0.45)
    assert space.cost(fits)[0] <= budget.limit
    agent = NetAdaptAgent(SearchContext(space, budget, 0), short_steps=1, warm_start=fits)
    outcome = run_search(agent, evaluate, lambda e: None)
    assert len(outcome.history) == 1 and outcome.best is not None
    assert outcome.best.candidate.ratios == pytest.approx(fits)
    halfway = space.uniform(0.2)
    agent = NetAdaptAgent(SearchContext(space, budget, 0), short_steps=1, initial_fraction=0.2, warm_start=halfway)
    outcome = run_search(agent, evaluate, lambda e: None)
    assert outcome.best is not None and outcome.best.meets_budget
    assert all(r >= halfway[k] - 1e-9 for e in outcome.history[1:] for k, r in e.candidate.ratios.items())


# -- launching: exactly once, skip unchanged, warm start (real store, no server) -----------------------


@pytest.fixture
def rt(tmp_path: Path, db_url: str) -> Iterator[Runtime]:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    settings = Settings(database_url=db_url, artifact_dir=tmp_path / "artifacts", schedule_weights_roots=[ckpts])
    jobs = JobStore(settings.database_url)
    jobs.migrate()
    yield Runtime.of(settings, jobs)
    jobs.close()


def add_schedule(rt: Runtime, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "name": "nightly", "cron": "0 2 * * *", "timezone": "UTC", "paused": False,
        "weights": {"path": str(rt.settings.schedule_weights_roots[0])}, "job": template(), "missed": "run_once",
        "grace_s": 3600.0, "skip_unchanged": True, "warm_start": True,
        "thresholds": {"accuracy_drop": 0.01, "latency_rise": 0.1, "budget_miss": True}, "webhook_url": None,
        "owner": "ci"}
    return rt.schedules.create(**{**values, **fields})


def test_concurrent_fires_of_one_time_start_one_job(rt: Runtime) -> None:
    write_checkpoint(rt.settings.schedule_weights_roots[0] / "a.safetensors", trained=False)
    schedule = add_schedule(rt)
    fired_at = datetime(2026, 11, 25, 2, 0, tzinfo=timezone.utc)
    barrier, outcomes = threading.Barrier(4), []

    def contender() -> None:  # each its own engine: as separate processes would be
        jobs = JobStore(rt.settings.database_url)
        mine = Runtime.of(rt.settings, jobs)
        barrier.wait()
        outcomes.append(launch(mine, schedule, fired_at, "cron"))
        jobs.close()

    threads = [threading.Thread(target=contender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [o for o in outcomes if o is not None]
    assert len(outcomes) == 4 and len(won) == 1 and won[0].status == "queued"
    jobs, total = rt.jobs.list_jobs(schedule_id=schedule.id)
    assert total == 1 and jobs[0].id == won[0].job_id
    assert jobs[0].spec["model"]["weights"] == f"upload:{won[0].weights_sha256}"
    assert (rt.settings.artifact_dir / "weights" / f"{won[0].weights_sha256}.safetensors").is_file()


def test_unchanged_weights_skip_and_previous_plan_warm_starts_optuna(rt: Runtime) -> None:
    folder = rt.settings.schedule_weights_roots[0]
    write_checkpoint(folder / "a.safetensors", trained=False)
    schedule = add_schedule(rt, job=template(strategy={"name": "optuna", "trials": 4, "parallel": 2}))
    t0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
    first = launch(rt, schedule, t0, "cron")
    assert first is not None and first.job_id is not None
    assert rt.jobs.get_job(first.job_id).spec["strategy"]["warm_start"] is None  # type: ignore[union-attr]
    # The first job succeeds with a plan: the next run on the same weights is skipped...
    plan_dir = rt.settings.artifact_dir / "jobs" / first.job_id
    plan_dir.mkdir(parents=True)
    (plan_dir / "plan.json").write_text(json.dumps({"groups": [{"name": "features.0", "ratio": 0.25}]}))
    rt.jobs.add_artifact(first.job_id, "plan.json", f"jobs/{first.job_id}/plan.json", "application/json", 1,
                         "0" * 64)
    rt.jobs.claim_next("w")
    rt.jobs.finish(first.job_id, "succeeded", result=result(0.5, 1.0))
    second = launch(rt, schedule, t0 + timedelta(days=1), "cron")
    assert second is not None and second.status == "skipped" and second.job_id is None
    assert second.reason is not None and "unchanged" in second.reason and first.id in second.reason
    # ...unless forced (run now), and then the previous best plan seeds the Optuna search.
    forced = launch(rt, schedule, t0 + timedelta(days=1, hours=1), "manual", force=True)
    assert forced is not None and forced.status == "queued" and forced.job_id is not None
    spec = rt.jobs.get_job(forced.job_id).spec  # type: ignore[union-attr]
    assert spec["strategy"]["warm_start"] == {"features.0": 0.25}
    assert forced.reason is not None and "warm start" in forced.reason
    # New weights run again without force.
    time.sleep(0.01)
    write_checkpoint(folder / "b.safetensors", trained=True)
    third = launch(rt, schedule, t0 + timedelta(days=2), "cron")
    assert third is not None and third.status == "queued" and third.weights_sha256 != first.weights_sha256
    assert third.weights_ref == str((folder / "b.safetensors").resolve())


def test_empty_folder_and_path_outside_roots_are_recorded(rt: Runtime, tmp_path: Path) -> None:
    schedule = add_schedule(rt)
    empty = launch(rt, schedule, datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc), "cron")
    assert empty is not None and empty.status == "skipped" and "no readable" in (empty.reason or "")
    elsewhere = add_schedule(rt, name="outside", weights={"path": str(tmp_path)})  # roots changed since creation
    refused = launch(rt, elsewhere, datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc), "cron")
    assert refused is not None and refused.status == "failed" and "outside the allowed" in (refused.reason or "")


@pytest.mark.slow
def test_missed_fires_follow_the_policy(rt: Runtime) -> None:
    """A scheduler stops before a fire time and another starts after it: run_once runs it late once
    (within grace), skip records it as missed."""
    write_checkpoint(rt.settings.schedule_weights_roots[0] / "a.safetensors", trained=False)
    at = soon(3)
    catch_up = add_schedule(rt, name="catch-up", cron=one_shot_cron(at), missed="run_once", grace_s=30.0)
    skip = add_schedule(rt, name="skip", cron=one_shot_cron(at), missed="skip", grace_s=1.0)
    first = SchedulerHost(rt.settings, rt.jobs)
    first.start()
    assert first.next_run(catch_up.id) == at and first.next_run(skip.id) == at
    first.stop()  # "server down" across the fire time
    time.sleep(max(0.0, (at - datetime.now(timezone.utc)).total_seconds()) + 4.5)
    second = SchedulerHost(rt.settings, rt.jobs)
    second.start()
    try:
        late = wait_for(lambda: [r for r in rt.schedules.runs(catch_up.id) if r.status != "starting"], 15,
                        "the catch-up run")
        missed = wait_for(lambda: rt.schedules.runs(skip.id), 15, "the missed record")
    finally:
        second.stop()
    assert [(r.trigger, r.status, r.fired_at) for r in late] == [("catch_up", "queued", at)]
    assert late[0].reason is not None and "late" in late[0].reason
    assert [(r.trigger, r.status, r.fired_at) for r in missed] == [("missed", "skipped", at)]
    assert "policy skip" in (missed[0].reason or "")
    assert rt.jobs.list_jobs(schedule_id=skip.id)[1] == 0


# -- over HTTP -----------------------------------------------------------------------------------------


def test_fires_once_then_run_now_flags_a_planted_regression(env: tuple[Server, Path]) -> None:
    srv, ckpts = env
    folder = ckpts / "nightly"
    write_checkpoint(folder / "epoch-001.safetensors", trained=True)
    hook = Webhook()
    try:
        at = soon(4)
        created = create(srv, name="regress", cron=one_shot_cron(at), timezone="UTC",
                         job=template(), weights={"path": str(folder)}, webhook_url=hook.url,
                         thresholds={"accuracy_drop": 0.05})
        assert created["next_run_at"] is not None and datetime.fromisoformat(created["next_run_at"]) == at
        assert created["thresholds"] == {"accuracy_drop": 0.05, "latency_rise": 0.1, "budget_miss": True}
        sid = created["id"]
        first = wait_for(lambda: [r for r in runs(srv, sid) if r.get("comparison")], 90, "the first run compared")
        time.sleep(2)  # well past the fire time: still one run
        assert len(runs(srv, sid)) == 1
        run1 = first[0]
        assert run1["trigger"] == "cron" and datetime.fromisoformat(run1["fired_at"]) == at
        assert run1["status"] == "succeeded" and run1["regression"] is False
        job = httpx.get(f"{srv.url}/api/v1/jobs/{run1['job_id']}").json()
        assert job["schedule_id"] == sid and job["status"] == "succeeded"

        # A worse checkpoint lands (untrained weights): run now; the comparison flags the drop.
        write_checkpoint(folder / "epoch-002.safetensors", trained=False)
        response = httpx.post(f"{srv.url}/api/v1/schedules/{sid}/run", headers=AUTH)
        assert response.status_code == 201, response.text
        run2_id = response.json()["id"]
        assert response.json()["trigger"] == "manual" and response.json()["weights_sha256"] != run1["weights_sha256"]
        run2 = wait_for(lambda: [r for r in runs(srv, sid) if r["id"] == run2_id and r.get("comparison")], 90,
                        "the second run compared")[0]
        assert run2["regression"] is True and "base_accuracy_drop" in run2["flags"], run2
        drop = run2["comparison"]["base"]["accuracy"]
        assert drop["previous"] - drop["current"] > 0.05
        assert run2["comparison"]["previous_run_id"] == run1["id"]
        notice = wait_for(lambda: hook.received, 10, "the webhook")[0]
        assert notice["event"] == "regression" and notice["run"]["id"] == run2_id
        assert "base_accuracy_drop" in notice["run"]["flags"]
        assert run2["webhook"]["status_code"] == 204

        metrics = httpx.get(f"{srv.url}/api/v1/metrics").text
        assert re.search(r'prunesearch_schedule_regressions\{schedule="regress"\} 1\.0', metrics), metrics
        assert 'prunesearch_schedule_last_run_regressed{schedule="regress"} 1.0' in metrics
        assert re.search(r'prunesearch_schedule_runs\{status="succeeded"\} [1-9]', metrics)

        # Unchanged weights, not forced: skipped with the reason.
        skipped = httpx.post(f"{srv.url}/api/v1/schedules/{sid}/run", params={"force": "false"}, headers=AUTH)
        assert skipped.json()["status"] == "skipped" and "unchanged" in skipped.json()["reason"]
        jobs = httpx.get(f"{srv.url}/api/v1/jobs", params={"schedule_id": sid}).json()
        assert jobs["total"] == 2
    finally:
        hook.close()


def test_pause_stops_firing_and_resume_restarts(env: tuple[Server, Path]) -> None:
    srv, ckpts = env
    write_checkpoint(ckpts / "pause" / "w.safetensors", trained=False)
    sid = create(srv, name="every-2s", cron="*/2 * * * * *", job=template(),
                 weights={"path": str(ckpts / "pause" / "w.safetensors")})["id"]
    wait_for(lambda: len(runs(srv, sid)) >= 2, 20, "two fires")
    paused = httpx.post(f"{srv.url}/api/v1/schedules/{sid}/pause", headers=AUTH).json()
    assert paused["paused"] is True and paused["next_run_at"] is None
    time.sleep(1)  # a fire already under way when pausing may still land
    count = len(runs(srv, sid))
    time.sleep(5)
    assert len(runs(srv, sid)) == count
    assert httpx.post(f"{srv.url}/api/v1/schedules/{sid}/resume", headers=AUTH).json()["paused"] is False
    wait_for(lambda: len(runs(srv, sid)) > count, 20, "a fire after resuming")
    statuses = [r["status"] for r in runs(srv, sid)]
    assert statuses[-1] in ("queued", "running", "succeeded") and set(statuses[:-1]) == {"skipped"}
    assert httpx.delete(f"{srv.url}/api/v1/schedules/{sid}", headers=AUTH).status_code == 204
    assert httpx.get(f"{srv.url}/api/v1/schedules/{sid}").status_code == 404


def test_validation_names_the_field(env: tuple[Server, Path], tmp_path: Path) -> None:
    srv, ckpts = env
    good = {"name": "v", "cron": "0 2 * * *", "timezone": "UTC", "job": template(), "weights": {"path": str(ckpts)}}

    def post(token: str = TOKEN, **changes: Any) -> httpx.Response:
        return httpx.post(f"{srv.url}/api/v1/schedules", json={**good, **changes},
                          headers={"Authorization": f"Bearer {token}"})

    def locs(response: httpx.Response) -> list[list[Any]]:
        return [e["loc"] for e in response.json()["detail"]]

    r = post(cron="0 25 * * *")
    assert r.status_code == 422 and locs(r) == [["body", "cron"]]
    r = post(timezone="Mars/Olympus")
    assert r.status_code == 422 and locs(r) == [["body", "timezone"]]
    r = post(job={**template(), "strategy": {"name": "uniform", "stepz": 3}})
    assert r.status_code == 422 and ["body", "job", "strategy", "uniform", "stepz"] in locs(r)
    r = post(job=template(model={"arch": "no_such_net"}))
    assert r.status_code == 422 and locs(r) == [["body", "job", "model", "arch"]]
    r = post(job=job_dict())  # the template names its own weights
    assert r.status_code == 422 and locs(r) == [["body", "job"]]
    r = post(weights={"path": str(tmp_path)})  # outside the operator's roots
    assert r.status_code == 400 and locs(r) == [["body", "weights", "path"]]
    r = post(weights={"path": "/etc/passwd"})
    assert r.status_code == 400 and "outside" in r.json()["detail"][0]["msg"]
    r = post(weights={"upload_id": "0" * 32})
    assert r.status_code == 400 and locs(r) == [["body", "weights", "upload_id"]]
    r = post(weights={"path": str(ckpts), "upload_id": "0" * 32})
    assert r.status_code == 422 and locs(r) == [["body", "weights"]]
    assert post(token=READ_TOKEN).status_code == 403
    created = post()
    assert created.status_code == 201
    sid = created.json()["id"]
    r = httpx.patch(f"{srv.url}/api/v1/schedules/{sid}", json={"cron": "bad"}, headers=AUTH)
    assert r.status_code == 422 and locs(r) == [["body", "cron"]]
    r = httpx.patch(f"{srv.url}/api/v1/schedules/{sid}", json={"cron": "30 3 * * 1-5", "timezone": "Asia/Tokyo",
                                                                "thresholds": {"latency_rise": 0.2}}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["cron"], body["timezone"], body["thresholds"]["latency_rise"], body["thresholds"]["accuracy_drop"]) \
        == ("30 3 * * 1-5", "Asia/Tokyo", 0.2, 0.01)
    nxt = datetime.fromisoformat(body["next_run_at"]).astimezone(cron.zone("Asia/Tokyo"))
    assert (nxt.hour, nxt.minute, nxt.strftime("%a") in ("Mon", "Tue", "Wed", "Thu", "Fri")) == (3, 30, True)
    listed = httpx.get(f"{srv.url}/api/v1/schedules").json()["items"]
    assert sid in [s["id"] for s in listed]
    assert httpx.post(f"{srv.url}/api/v1/schedules/{sid}/run").status_code == 401


def test_cli_schedule_commands(env: tuple[Server, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    srv, ckpts = env
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job_dict()))  # its weights are dropped with a note
    common = ["--server", srv.url, "--token", TOKEN]
    assert main(["schedule", "add", "cli-nightly", "--cron", "0 2 * * 1-5", "--timezone", "Europe/Berlin",
                 "--job", str(job_file), "--weights-path", str(ckpts), "--paused", *common]) == 0
    sid = json.loads(capsys.readouterr().out)["id"]
    assert main(["schedule", "list", *common]) == 0
    assert sid in capsys.readouterr().out
    assert main(["schedule", "resume", sid, *common]) == 0
    assert json.loads(capsys.readouterr().out)["paused"] is False
    assert main(["schedule", "pause", sid, *common]) == 0
    assert json.loads(capsys.readouterr().out)["paused"] is True
    assert main(["schedule", "run", sid, *common]) == 0  # runs even paused
    assert json.loads(capsys.readouterr().out)["status"] in ("queued", "skipped")
    assert main(["schedule", "runs", sid, *common]) == 0
    assert "manual" in capsys.readouterr().out
    assert main(["schedule", "rm", sid, *common]) == 0
    capsys.readouterr()
    assert main(["schedule", "add", "bad", "--cron", "0 99 * * *", "--job", str(job_file), "--weights-path",
                 str(ckpts), *common]) == 2
    assert "cron" in capsys.readouterr().err


def test_two_servers_on_one_database_start_one_run(tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    write_checkpoint(ckpts / "w.safetensors", trained=False)
    env = {"PRUNESEARCH_SCHEDULE_WEIGHTS_ROOTS": json.dumps([str(ckpts)]), "PRUNESEARCH_SCHEDULE_TICK_S": "0.5"}
    a = started(tmp_path, **env)
    try:
        b = started(tmp_path, **env)  # same root: same SQLite file, same artifact folder
        try:
            at = soon(5)
            sid = create(a, name="shared", cron=one_shot_cron(at), job=template(),
                         weights={"path": str(ckpts)}, skip_unchanged=False)["id"]
            wait_for(lambda: runs(b, sid), 30, "the fire")
            time.sleep(3)  # both schedulers have had their chance
            fired = runs(b, sid)
            assert [(r["trigger"], datetime.fromisoformat(r["fired_at"])) for r in fired] == [("cron", at)]
            jobs = httpx.get(f"{b.url}/api/v1/jobs", params={"schedule_id": sid}).json()
            assert jobs["total"] == 1 and jobs["items"][0]["id"] == fired[0]["job_id"]
        finally:
            stop(b)
    finally:
        stop(a)
