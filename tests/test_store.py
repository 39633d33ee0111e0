"""Job store conformance: one suite, run against SQLite and a real PostgreSQL.

PostgreSQL comes from PRUNESEARCH_TEST_POSTGRES_URL (default: the local trust-auth server); each test
gets its own schema, dropped afterwards. Unreachable PostgreSQL skips those cases, or fails them when
PRUNESEARCH_REQUIRE_POSTGRES=1 (CI must not pass by silently testing SQLite only).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event

from service.store import JobNotFoundError, JobStateError, JobStore, StoreUnavailableError
from service.store.migrate import current_revision, head_revision
from service.store.models import Base

SHA = "ab" * 32
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    """Deterministic time: every reading is `step` later than the previous one (0 freezes it)."""

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(milliseconds=1)) -> None:
        self.now, self.step = start, step
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += self.step
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[JobStore]:
    s = JobStore(db_url, clock=clock)
    s.migrate()
    yield s
    s.close()


def spec(name: str = "tiny", **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": {"arch": "small_cnn"}, "budget": {"metric": "flops", "target": 0.5}, **extra}


def running(store: JobStore, worker: str = "w1", **kwargs: Any) -> str:
    job_id = store.create_job(spec(), None, **kwargs).id
    claimed = store.claim_next(worker)
    assert claimed is not None and claimed.id == job_id
    return job_id


# -- jobs ------------------------------------------------------------------------------------------


def test_create_and_get_round_trip(store: JobStore) -> None:
    raw = spec("resnet", budget={"metric": "flops", "target": 0.5, "score": float("nan")})
    job = store.create_job(raw, None, owner="alice", schedule_id="nightly")
    raw["model"]["arch"] = "changed after submit"
    got = store.get_job(job.id)
    assert got == job
    assert len(job.id) == 32 and int(job.id, 16) >= 0
    assert (job.name, job.status, job.owner, job.schedule_id) == ("resnet", "queued", "alice", "nightly")
    assert job.spec["model"] == {"arch": "small_cnn"}  # stored a copy, not the caller's dict
    assert job.spec["budget"]["score"] is None  # NaN is not JSON (PostgreSQL rejects it)
    assert (job.progress, job.result, job.error, job.checkpoint) == ({}, None, None, None)
    assert (job.attempts, job.cancel_requested, job.worker) == (0, False, None)
    assert job.created_at.tzinfo == timezone.utc and job.started_at is None and job.finished_at is None
    assert store.create_job(spec(), "explicit").name == "explicit"
    assert store.get_job("0" * 32) is None


def test_times_are_utc_whatever_the_clock_zone(db_url: str) -> None:
    plus2 = timezone(timedelta(hours=2))
    at = datetime(2026, 5, 1, 14, 30, 15, 123456, tzinfo=plus2)
    s = JobStore(db_url, clock=lambda: at)
    try:
        s.migrate()
        job = s.create_job(spec(), None)
        got = s.get_job(job.id)
        assert got is not None and got.created_at == at and got.created_at.tzinfo == timezone.utc
        assert got.created_at.hour == 12 and got.created_at.microsecond == 123456
    finally:
        s.close()


def test_list_filters_and_pagination(store: JobStore) -> None:
    ids = [store.create_job(spec(f"j{i}"), None, schedule_id="nightly" if i % 2 else None).id for i in range(5)]
    assert store.claim_next("w") is not None  # ids[0] is running now

    page, total = store.list_jobs(limit=2)
    assert total == 5 and [j.id for j in page] == ids[::-1][:2]  # newest first
    page, total = store.list_jobs(limit=2, offset=4)
    assert total == 5 and [j.id for j in page] == [ids[0]]
    assert store.list_jobs(offset=10) == ([], 5)

    queued, total = store.list_jobs(status="queued")
    assert total == 4 and [j.id for j in queued] == ids[:0:-1]
    nightly, total = store.list_jobs(schedule_id="nightly")
    assert total == 2 and [j.id for j in nightly] == [ids[3], ids[1]]
    both, total = store.list_jobs(status="running", schedule_id="nightly")
    assert (both, total) == ([], 0)
    with pytest.raises(ValueError, match="status"):
        store.list_jobs(status="bogus")
    with pytest.raises(ValueError):
        store.list_jobs(limit=0)


def test_claim_is_fifo_and_marks_running(store: JobStore, clock: Clock) -> None:
    ids = [store.create_job(spec(), None).id for _ in range(3)]
    clock.advance(1)
    clock.step = timedelta(0)  # same created_at: ties go by id
    tied = sorted(store.create_job(spec(), None).id for _ in range(3))
    clock.step = timedelta(milliseconds=1)

    claimed = [store.claim_next(f"w{i}") for i in range(6)]
    assert [j.id for j in claimed if j] == ids + tied
    first = claimed[0]
    assert first is not None
    assert (first.status, first.worker, first.attempts) == ("running", "w0", 1)
    assert first.started_at is not None and first.started_at == first.heartbeat_at
    assert first.started_at > first.created_at
    assert store.claim_next("w") is None
    assert store.queue_length() == 0


def test_concurrent_claims_take_each_job_exactly_once(store: JobStore) -> None:
    ids = {store.create_job(spec(), None).id for _ in range(20)}

    # Widen the window between choosing a job and marking it, so a non-atomic claim would be caught.
    @event.listens_for(store.engine, "after_cursor_execute")
    def _slow_select(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT JOBS.ID"):
            time.sleep(0.005)

    got: dict[str, list[str]] = {f"w{i}": [] for i in range(4)}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def claimer(worker: str) -> None:
        try:
            start.wait()
            while (job := store.claim_next(worker)) is not None:
                got[worker].append(job.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(w,)) for w in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    claimed = [job_id for jobs in got.values() for job_id in jobs]
    assert len(claimed) == 20 and set(claimed) == ids
    owner = {job_id: worker for worker, jobs in got.items() for job_id in jobs}
    jobs, _ = store.list_jobs(limit=100)
    assert all((j.status, j.attempts, j.worker) == ("running", 1, owner[j.id]) for j in jobs)


def test_heartbeat_progress_and_checkpoint(store: JobStore, clock: Clock) -> None:
    job_id = running(store, "w1")
    clock.advance(30)
    beat = store.heartbeat(job_id, "w1")
    assert beat is not None and beat.heartbeat_at is not None and beat.started_at is not None
    assert beat.heartbeat_at - beat.started_at >= timedelta(seconds=30)
    assert store.heartbeat(job_id, "someone-else") is None

    progress = {"phase": "search", "done": 3, "planned": 12, "best_val_acc": 0.91, "eta_s": 40.5}
    store.update_progress(job_id, progress)
    state = {"episode": 7, "history": [[0.1, 0.2], [0.3, 0.4]], "rng": "abc"}
    store.save_checkpoint(job_id, state)
    job = store.get_job(job_id)
    assert job is not None and job.progress == progress and job.checkpoint == state
    store.update_progress(job_id, {"phase": "final"})
    assert store.get_job(job_id).progress == {"phase": "final"}  # type: ignore[union-attr]

    for call in (lambda: store.heartbeat("nope", "w1"), lambda: store.update_progress("nope", {}),
                 lambda: store.save_checkpoint("nope", {})):
        with pytest.raises(JobNotFoundError):
            call()
    store.finish(job_id, "succeeded")
    assert store.heartbeat(job_id, "w1") is None  # finished: the runner should stop


def test_finish_only_from_queued_or_running(store: JobStore) -> None:
    job_id = running(store, "w1")
    with pytest.raises(JobStateError):
        store.finish(job_id, "succeeded", worker="w2")
    done = store.finish(job_id, "succeeded", result={"budget_met": True, "ratios": [0.1, 0.2]}, worker="w1")
    assert (done.status, done.result, done.error) == ("succeeded", {"budget_met": True, "ratios": [0.1, 0.2]}, None)
    assert done.finished_at is not None and done.is_terminal
    with pytest.raises(JobStateError, match="already succeeded"):
        store.finish(job_id, "failed", error="late")
    assert store.get_job(job_id) == done

    queued = store.create_job(spec(), None).id
    failed = store.finish(queued, "failed", error="spec rejected by the runner")
    assert (failed.status, failed.error) == ("failed", "spec rejected by the runner")
    with pytest.raises(ValueError, match="status"):
        store.finish(store.create_job(spec(), None).id, "running")
    with pytest.raises(JobNotFoundError):
        store.finish("nope", "failed")


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    run_id = running(store, "w1")
    queued_id = store.create_job(spec(), None).id
    done_id = store.create_job(spec(), None).id
    store.finish(done_id, "succeeded")

    queued = store.request_cancel(queued_id)
    assert queued is not None and queued.status == "cancelled" and queued.finished_at is not None
    assert [e.type for e in store.events_after(queued_id)] == ["cancelled"]
    assert store.claim_next("w2") is None  # the cancelled job is out of the queue

    run = store.request_cancel(run_id)
    assert run is not None and (run.status, run.cancel_requested) == ("running", True)
    beat = store.heartbeat(run_id, "w1")
    assert beat is not None and beat.cancel_requested  # how the runner learns of it

    before = store.get_job(done_id)
    assert store.request_cancel(done_id) == before
    assert store.request_cancel("nope") is None


# -- orphans ---------------------------------------------------------------------------------------


def test_requeue_orphans_keeps_events_and_checkpoint(store: JobStore) -> None:
    job_id = running(store, "host-a-1")
    first = store.append_event(job_id, {"type": "phase", "phase": "search", "state": "start"})
    store.save_checkpoint(job_id, {"episode": 3})
    store.update_progress(job_id, {"phase": "search", "done": 3})

    assert store.requeue_orphans() == [job_id]
    job = store.get_job(job_id)
    assert job is not None and (job.status, job.worker, job.heartbeat_at) == ("queued", None, None)
    assert job.checkpoint == {"episode": 3} and job.progress == {"phase": "search", "done": 3}
    events = store.events_after(job_id)
    assert events[0].id == first and [e.type for e in events] == ["phase", "requeued"]
    assert events[-1].data["reason"] and events[-1].data["worker"] == "host-a-1"

    assert store.heartbeat(job_id, "host-a-1") is None  # the old runner has lost it
    again = store.claim_next("host-b-1")
    assert again is not None and again.id == job_id and again.attempts == 2
    with pytest.raises(JobStateError):
        store.finish(job_id, "failed", worker="host-a-1")
    assert store.requeue_orphans() == [job_id]  # nothing running is ever left behind


def test_requeue_orphans_filters(store: JobStore, clock: Clock) -> None:
    stale = running(store, "host-a-1")
    clock.advance(120)
    fresh = running(store, "host-a-2")
    other = running(store, "host_b-1")
    assert store.requeue_orphans(stale_after_s=60, worker_prefix="host-b") == []
    assert store.requeue_orphans(worker_prefix="host_") == [other]  # "_" is literal, not a wildcard
    assert store.requeue_orphans(stale_after_s=60) == [stale]
    assert store.get_job(fresh).status == "running"  # type: ignore[union-attr]
    assert store.requeue_orphans(job_ids=["nope"]) == []
    assert store.requeue_orphans(job_ids=[fresh], reason="worker exited with code -9") == [fresh]
    assert store.events_after(fresh)[-1].data["reason"] == "worker exited with code -9"


def test_requeue_orphans_cancels_or_fails_instead_of_looping(store: JobStore) -> None:
    cancelled = running(store, "w1")
    store.request_cancel(cancelled)
    exhausted = running(store, "w2")
    assert store.requeue_orphans(max_attempts=1) == []
    c, f = store.get_job(cancelled), store.get_job(exhausted)
    assert c is not None and c.status == "cancelled" and c.finished_at is not None
    assert f is not None and f.status == "failed" and f.error and "runner lost" in f.error
    assert store.events_after(cancelled)[-1].type == "cancelled"
    assert store.events_after(exhausted)[-1].type == "failed"


# -- events ----------------------------------------------------------------------------------------


def test_event_ids_increase_and_resume(store: JobStore) -> None:
    a, b = store.create_job(spec(), None).id, store.create_job(spec(), None).id
    ids = [store.append_event(job, {"type": "evaluation", "n": i}) for i in range(6) for job in (a, b)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # strictly increasing, across jobs too

    events = store.events_after(a)
    assert [e.data["n"] for e in events] == list(range(6)) and all(e.job_id == a for e in events)
    assert events[0].data == {"type": "evaluation", "n": 0} and events[0].type == "evaluation"
    resumed = store.events_after(a, after_id=events[2].id)
    assert [e.id for e in resumed] == [e.id for e in events[3:]]
    assert [e.id for e in store.events_after(a, after_id=events[0].id, limit=2)] == [events[1].id, events[2].id]
    assert store.events_after(a, after_id=events[-1].id) == []
    assert store.events_after("nope") == []

    with pytest.raises(JobNotFoundError):
        store.append_event("nope", {"type": "phase"})
    with pytest.raises(ValueError, match="type"):
        store.append_event(a, {"phase": "no type"})


def test_concurrent_appends_keep_one_order(store: JobStore) -> None:
    job_id = store.create_job(spec(), None).id

    def append(worker: int) -> None:
        for i in range(8):
            store.append_event(job_id, {"type": "log", "worker": worker, "i": i})

    threads = [threading.Thread(target=append, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    events = store.events_after(job_id)
    assert len(events) == 24 and [e.id for e in events] == sorted(e.id for e in events)
    for w in range(3):  # each writer's events are in its own order
        assert [e.data["i"] for e in events if e.data["worker"] == w] == list(range(8))


# -- artifacts -------------------------------------------------------------------------------------


def test_artifacts_unique_per_job_and_name(store: JobStore) -> None:
    a, b = store.create_job(spec(), None).id, store.create_job(spec(), None).id
    store.add_artifact(a, "report.json", f"{a}/report.json", "application/json", 120, SHA)
    store.add_artifact(a, "model.onnx", f"{a}/model.onnx", "application/octet-stream", 9000, "cd" * 32)
    store.add_artifact(b, "report.json", f"{b}/report.json", "application/json", 80, SHA)

    again = store.add_artifact(a, "report.json", f"{a}/report.json", "application/json", 130, "ef" * 32)
    listed = store.artifacts(a)
    assert [x.name for x in listed] == ["model.onnx", "report.json"]  # replaced, not duplicated
    assert store.get_artifact(a, "report.json") == again and (again.size, again.sha256) == (130, "ef" * 32)
    got_b = store.get_artifact(b, "report.json")
    assert got_b is not None and got_b.size == 80 and got_b.path == f"{b}/report.json"
    assert store.get_artifact(a, "missing") is None and store.artifacts("nope") == []

    with pytest.raises(JobNotFoundError):
        store.add_artifact("nope", "x", "x", "text/plain", 1, SHA)
    with pytest.raises(ValueError, match="sha256"):
        store.add_artifact(a, "x", "x", "text/plain", 1, "not-a-digest")


# -- figures, schema, connection -------------------------------------------------------------------


def test_counts_queue_length_and_ping(store: JobStore) -> None:
    assert store.counts_by_status() == dict.fromkeys(("queued", "running", "succeeded", "failed", "cancelled"), 0)
    ids = [store.create_job(spec(), None).id for _ in range(5)]
    for _ in range(3):
        store.claim_next("w")
    store.finish(ids[1], "failed")
    store.finish(ids[2], "succeeded")
    store.request_cancel(ids[3])
    assert store.counts_by_status() == {"queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 1}
    assert store.queue_length() == 1
    assert store.ping()


def test_active_count_is_per_owner_and_counts_a_claimed_job_once(store: JobStore) -> None:
    """The per-token job limit reads this: queued + running jobs of one owner, whatever moves between them."""
    ids = [store.create_job(spec(), None, owner="ci").id for _ in range(4)]
    store.create_job(spec(), None, owner="other")
    assert store.active_count("ci") == 4
    store.claim_next("w")  # queued -> running: still one active job
    store.finish(ids[1], "failed")
    store.request_cancel(ids[2])
    assert store.active_count("ci") == 2
    assert store.active_count("other") == 1 and store.active_count("nobody") == 0


def test_migrations_build_exactly_the_models(store: JobStore) -> None:
    store.migrate()  # idempotent: every server runs it at start-up
    assert current_revision(store.engine) == head_revision() == "0002"
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == []


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    s = JobStore(f"sqlite:///{tmp_path / 'sub' / 'jobs.db'}", busy_timeout_ms=1234)
    try:
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
    finally:
        s.close()


def test_unreachable_database_names_url_without_password(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError) as info:
        JobStore("postgresql+psycopg://prune:s3cret@127.0.0.1:1/jobs?connect_timeout=2")
    message = str(info.value)
    assert "127.0.0.1:1/jobs" in message and "s3cret" not in message and "***" in message

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailableError, match=r"jobs\.db"):
        JobStore(f"sqlite:///{blocker / 'jobs.db'}")
    with pytest.raises(StoreUnavailableError, match="driver"):
        JobStore("nosuchdb://u:pw@host/db")
