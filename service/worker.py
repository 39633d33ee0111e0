"""Run one claimed job in its own process: `python -m service.worker JOB_ID`.

The server never runs searches in its own process, so a crashing search or a `kill -9` of the
server cannot take the other down. Every pipeline event is persisted (the dashboard and SSE
replay them), progress is summarised on the job row, and artifacts are registered with their size
and hash. A cancel request is seen by one watcher thread; the job stops at its next event, or
sooner where the execution backend polls the same flag (a batch of evaluations, a timing).
"""

from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from agents.base import Event
from service.config import Settings
from service.execution import EvaluationCancelled
from service.pipeline import run_job
from service.spec import JobSpec, parse_spec
from service.store import JobStore, StoreUnavailableError

log = structlog.get_logger()
HEARTBEAT_S = 5.0
LOST_EXIT = 75  # the job was taken from this worker
CANCEL_POLL_S = 1.0
CONTENT_TYPES = {".json": "application/json", ".safetensors": "application/octet-stream",
                 ".onnx": "application/octet-stream", ".zip": "application/zip", ".db": "application/vnd.sqlite3"}


class JobCancelled(Exception):
    """Raised from the event hook when the job's cancellation was requested."""


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.artifact_dir / "jobs" / job_id


def resolve_paths(spec: JobSpec, settings: Settings) -> JobSpec:
    """Turn server-side references into paths: `upload:<id>` weights, operator dataset roots."""
    weights, dataset = spec.model.weights, spec.dataset
    if isinstance(weights, str) and weights.startswith("upload:"):
        spec = spec.model_copy(update={"model": spec.model.model_copy(
            update={"weights": str(settings.upload_file(weights.split(":", 1)[1]))})})
    if dataset.root is None and dataset.name in settings.dataset_roots:
        root = settings.dataset_roots[dataset.name]
        spec = spec.model_copy(update={"dataset": dataset.model_copy(update={"root": root})})
    return spec


def progress_of(event: Event, progress: dict[str, Any]) -> dict[str, Any]:
    """Fold one event into the job row's progress summary."""
    kind = event.get("type")
    if kind == "phase" and event.get("state") == "start":  # counters belong to a phase: start afresh
        progress = {"phase": event["phase"], **{k: v for k, v in progress.items() if k == "best_val_acc"}}
    elif kind == "phase" and event.get("error") is not None:  # the phase raised: say which, not "done"
        progress = {**progress, "phase": event["phase"], "failed_phase": event["phase"], "error": event["error"]}
    elif kind in ("evaluation", "progress"):
        progress = {**progress, "done": event.get("done"), "planned": event.get("planned", event.get("total"))}
        if event.get("best_val_acc") is not None:
            progress["best_val_acc"] = event["best_val_acc"]
        elapsed, done, planned = event.get("elapsed_s"), event.get("done"), progress.get("planned")
        if kind == "evaluation" and elapsed and done and planned:
            progress["eta_s"] = round(elapsed / done * max(planned - done, 0), 1)
    return progress


def execute(job_id: str, settings: Settings, worker: str) -> str:
    """Run the job to an end state and return it; every outcome is written to the store."""
    store = JobStore(settings.database_url)
    job = store.get_job(job_id)
    if job is None:
        raise SystemExit(f"no job {job_id}")
    progress: dict[str, Any] = {}
    stop, cancelled = threading.Event(), threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                mine = store.heartbeat(job_id, worker)
            except StoreUnavailableError as exc:  # a database blip: keep beating, the next one may land
                log.warning("job.heartbeat_failed", job=job_id, error=str(exc))
                continue
            if mine is None:  # re-queued while we were cut off (or ended elsewhere): another worker owns it now
                log.error("job.lost", job=job_id, worker=worker)
                os._exit(LOST_EXIT)  # stop at once: two workers must never write one job

    threading.Thread(target=beat, daemon=True).start()
    threading.Thread(target=watch_cancel, args=(store, job_id, stop, cancelled), daemon=True).start()

    def emit(event: Event) -> None:
        nonlocal progress
        store.append_event(job_id, event)
        updated = progress_of(event, progress)
        if updated != progress:
            progress = updated
            store.update_progress(job_id, progress)
        if cancelled.is_set():
            raise JobCancelled

    out = job_dir(settings, job_id)
    try:
        spec = resolve_paths(parse_spec(job.spec), settings)
        def checkpoint(state: dict[str, Any]) -> None:
            store.save_checkpoint(job_id, state)
            store.update_progress(job_id, {**progress, "checkpointed": len(state["history"])})

        if job.checkpoint:
            log.info("job.resume", job=job_id, evaluations=len(job.checkpoint.get("history", [])))
        result = run_job(spec, out, emit=emit, settings=settings, checkpoint=checkpoint,
                         resume=job.checkpoint or None, should_stop=cancelled.is_set)
        register_artifacts(store, job_id, out, settings.artifact_dir)
        summary = {k: result.report[k] for k in ("budget", "budget_met", "base", "pruned", "ratios", "search")}
        store.finish(job_id, "succeeded", result=summary, worker=worker)
        return "succeeded"
    except (JobCancelled, EvaluationCancelled):
        store.append_event(job_id, {"type": "cancelled"})
        store.finish(job_id, "cancelled", error="cancelled by request", worker=worker)
        return "cancelled"
    except StoreUnavailableError:
        raise  # the database blipped, the job did not fail: exit non-zero and the runner re-queues it (resumes)
    except Exception as exc:  # every failure ends the job with its reason, never silently
        log.exception("job.failed", job=job_id)
        reason = storage_failure(exc)
        if reason is not None and not store.artifacts(job_id):
            shutil.rmtree(out, ignore_errors=True)  # unregistered partial files only take the space others need
        error = reason or f"{type(exc).__name__}: {exc}"
        store.append_event(job_id, {"type": "failed", "error": error})
        store.finish(job_id, "failed", error=error, worker=worker)
        return "failed"
    finally:
        stop.set()


DISK_ERRORS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
               errno.EROFS: "Read-only file system", errno.EFBIG: "File too large"}


def storage_failure(exc: BaseException) -> str | None:
    """A clear reason when the job died because its artifacts could not be written (disk full, quota, read-only).

    Writers differ in what they raise: open()/json give OSError with an errno, the safetensors writer a
    SafetensorError that only names the OS error in its text; the whole exception chain is searched.
    """
    seen: BaseException | None = exc
    for _ in range(20):  # a chain is short; the bound guards against a cyclic one
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in DISK_ERRORS:
            where = f": {seen.filename}" if seen.filename else ""
            return f"cannot write job artifacts ({DISK_ERRORS[seen.errno]}){where}"
        text = str(seen)
        for message in DISK_ERRORS.values():
            if message in text:
                return f"cannot write job artifacts ({message}): {type(seen).__name__}: {text}"
        seen = seen.__cause__ or seen.__context__
    return None


def watch_cancel(store: JobStore, job_id: str, stop: threading.Event, cancelled: threading.Event) -> None:
    """Poll the job row for a cancel request once a second and raise `cancelled`: the event hook and the
    execution backend (which cancels its Ray tasks and kills its actors) both read that flag."""
    while not stop.wait(CANCEL_POLL_S):
        try:
            job = store.get_job(job_id)
        except StoreUnavailableError:  # a database blip: the next poll may land
            continue
        if job is not None and job.cancel_requested:
            cancelled.set()
            return


def register_artifacts(store: JobStore, job_id: str, folder: Path, root: Path) -> None:
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".tmp")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        guessed = mimetypes.guess_type(path.name)[0]
        content_type = CONTENT_TYPES.get(path.suffix) or guessed or "application/octet-stream"
        store.add_artifact(job_id, path.name, str(path.relative_to(root)), content_type, path.stat().st_size, digest)


def main(argv: list[str] | None = None) -> int:
    from service.progress import configure_logging

    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print("usage: python -m service.worker JOB_ID WORKER_NAME", file=sys.stderr)
        return 2
    configure_logging(json_logs=True)
    start = time.perf_counter()
    status = execute(args[0], Settings(), args[1])
    log.info("job.end", job=args[0], status=status, seconds=round(time.perf_counter() - start, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
