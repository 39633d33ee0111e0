"""The job runner: claims queued jobs in order and runs each in a worker process.

It lives in a thread of the server (or of `prunesearch worker`), never on the event loop. Jobs
run in child processes, at most `max_concurrent_jobs` at once; a worker that dies without ending
its job (crash, OOM kill) gets its job re-queued, and at start-up jobs whose worker stopped
heartbeating (a server killed with -9) are re-queued, so nothing is silently dropped or left
`running` forever.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import structlog

from service.config import Settings
from service.store import JobStore
from service.worker import job_dir

log = structlog.get_logger()
MAX_ATTEMPTS = 3
POLL_S = 0.5


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings a worker process needs, as the environment variables `Settings` reads."""
    env = dict(os.environ)
    env.update({
        "PRUNESEARCH_DATABASE_URL": settings.database_url,
        "PRUNESEARCH_ARTIFACT_DIR": str(settings.artifact_dir.resolve()),
        "PRUNESEARCH_LUT_CACHE_DIR": str(settings.lut_cache_dir),
        "PRUNESEARCH_DATASET_ROOTS": json.dumps(settings.dataset_roots),
        "PRUNESEARCH_MODEL_FACTORIES": json.dumps(settings.model_factories),
        "PYTHONUNBUFFERED": "1",
    })
    if settings.ray_address:
        env["PRUNESEARCH_RAY_ADDRESS"] = settings.ray_address
    return env


@dataclass
class JobRunner:
    settings: Settings
    store: JobStore
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> None:
        requeued = self.store.requeue_orphans(stale_after_s=self.settings.stale_after_s)
        if requeued:
            log.warning("runner.requeued_orphans", jobs=requeued)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; running workers finish their jobs (they heartbeat on their own)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        next_sweep = time.monotonic() + self.settings.stale_after_s
        while not self._stop.is_set():
            try:
                self._reap()
                if time.monotonic() >= next_sweep:  # jobs whose worker died where no runner saw it exit
                    self.store.requeue_orphans(stale_after_s=self.settings.stale_after_s, max_attempts=MAX_ATTEMPTS,
                                               exclude=list(self.procs))
                    next_sweep = time.monotonic() + self.settings.stale_after_s
                while len(self.procs) < self.settings.max_concurrent_jobs:
                    job = self.store.claim_next(self.name)
                    if job is None:
                        break
                    self._spawn(job.id)
            except Exception:  # the loop must survive a database hiccup; the next poll retries
                log.exception("runner.poll_failed")
            self._stop.wait(POLL_S)

    def _spawn(self, job_id: str) -> None:
        folder = job_dir(self.settings, job_id)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "worker.log", "ab") as logfile:
            self.procs[job_id] = subprocess.Popen(
                [sys.executable, "-m", "service.worker", job_id, self.name], stdout=logfile,
                stderr=subprocess.STDOUT, env=settings_env(self.settings), start_new_session=True)
        log.info("runner.started", job=job_id, pid=self.procs[job_id].pid)

    def _reap(self) -> None:
        """End or re-queue the jobs of exited workers. A worker is forgotten only once its job is
        settled in the store: with the database briefly down, the next poll tries again."""
        for job_id, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            job = self.store.get_job(job_id)
            if job is not None and job.status == "running":  # else the worker ended its job itself
                reason = f"worker exited with code {code} before ending the job"
                if job.attempts >= MAX_ATTEMPTS:
                    self.store.append_event(job_id, {"type": "failed", "error": reason})
                    self.store.finish(job_id, "failed", error=f"{reason} ({job.attempts} attempts)")
                else:
                    self.store.requeue_orphans(job_ids=[job_id], reason=reason)
                log.warning("runner.worker_died", job=job_id, code=code)
            del self.procs[job_id]
