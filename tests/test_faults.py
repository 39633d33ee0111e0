"""Faults an operator meets: the database is down at start or briefly mid-job, the artifact disk fills up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL, job_dict
from tests.live_server import Server, free_port, started, stop
from tests.test_server import wait_for

ARTIFACT_FS_BYTES = 16 * 1024  # room for the job folder and job.json, not for the weights, ONNX and reports


@pytest.mark.slow
def test_serve_with_unreachable_database_exits_with_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port()),
         "--db", "postgresql+psycopg://127.0.0.1:1/x", "--artifact-dir", str(tmp_path / "artifacts")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "prunesearch serve: error: cannot reach the job database postgresql+psycopg://127.0.0.1:1/x" in proc.stderr
    assert "Connection refused" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def tiny_artifact_fs(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny tmpfs as the artifact folder: writes fail with ENOSPC as on a full disk.

    Mounting needs root (CI and the dev machines run as root); elsewhere the test is skipped, never faked.
    """
    mount_point = tmp_path / "artifacts"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={ARTIFACT_FS_BYTES}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        for _ in range(50):  # a just-stopped server's children may hold it for a moment
            if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def test_full_artifact_disk_fails_the_job_with_the_reason_and_keeps_the_store_consistent(
        tmp_path: Path, tiny_artifact_fs: Path) -> None:
    srv: Server = started(tmp_path)
    try:
        client = srv.client()
        job = client.submit(job_dict())
        done = wait_for(client, job["id"], {"succeeded", "failed"})
        assert done["status"] == "failed"
        assert "cannot write job artifacts (No space left on device)" in done["error"], done["error"]
        # consistent: no artifact rows, the plan is a clean 404, the partial folder is gone, the failure is an event
        assert httpx.get(f"{srv.url}/api/v1/jobs/{job['id']}/artifacts").json() == []
        assert httpx.get(f"{srv.url}/api/v1/jobs/{job['id']}/plan").status_code == 404
        assert not (tiny_artifact_fs / "jobs" / job["id"]).exists()
        failed = [data for _, kind, data in client.events(job["id"]) if kind == "failed"]
        assert failed and failed[0]["error"] == done["error"]
        # the server lives on and the space is free again for the next job's first file
        assert httpx.get(f"{srv.url}/api/v1/healthz").json() == {"database": True, "ray": "embedded"}
        assert os.statvfs(tiny_artifact_fs).f_bfree * os.statvfs(tiny_artifact_fs).f_frsize >= ARTIFACT_FS_BYTES // 2
    finally:
        stop(srv)


def test_healthz_reports_an_unreachable_ray_cluster(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.config import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", artifact_dir=tmp_path / "artifacts",
                        ray_address="127.0.0.1:1")
    with TestClient(create_app(settings, run_jobs=False)) as client:
        r = client.get("/api/v1/healthz")
    assert r.status_code == 503
    assert r.json() == {"database": True, "ray": False}


def test_database_outage_mid_job_never_loses_the_job(tmp_path: Path, pg_admin: Engine) -> None:
    """PostgreSQL refuses every connection for a few seconds while a search runs: the job is never
    stuck `running`, lost or failed for it; a worker cut off mid-write exits and the job resumes."""
    name = f"faults_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    srv = started(tmp_path, db=url, PRUNESEARCH_STALE_AFTER_S="2")
    try:
        client = srv.client()
        job = client.submit(job_dict(strategy={"name": "optuna", "trials": 40, "parallel": 1}))
        deadline = time.monotonic() + 120
        while not any(kind == "evaluation" for _, kind, _ in client.events(job["id"])):
            assert time.monotonic() < deadline, "the search never started"
            time.sleep(0.5)
        with pg_admin.connect() as conn:  # the outage: no new connections, every open one cut
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": name})
            time.sleep(4)
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        done = wait_for(client, job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
        # a write that hit the outage ends the worker, not the job: it is re-queued and resumes
        assert done["status"] == "succeeded", done
        kinds = [kind for _, kind, _ in client.events(job["id"])]
        assert kinds.count("done") == 1 and kinds.count("requeued") == done["attempts"] - 1
        assert [j["id"] for j in client.jobs()["items"]] == [job["id"]]
    finally:
        stop(srv)
        with pg_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
