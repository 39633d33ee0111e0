"""JobStore: the durable record of jobs, their events and artifacts, and the queue runners claim from.

Shared by API handlers, runner threads and several server processes, so every method runs in its own
short transaction and returns frozen snapshots. Changes to one job lock its row first (PostgreSQL:
SELECT ... FOR NO KEY UPDATE; SQLite: every write transaction is BEGIN IMMEDIATE), which makes each
read-check-write step atomic and keeps one job's event ids committed in increasing order, so a
client resuming an event stream after id N can never miss an event that commits later with a smaller id.

Methods that change a job raise JobNotFoundError for an unknown id; lookups return None or [].
Times come from this process's clock (UTC): servers sharing a database need synchronised clocks
for `requeue_orphans(stale_after_s=...)` to judge heartbeats fairly.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from sqlalchemy import Engine, func, or_, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from service.store import migrate as migrations
from service.store.engine import UNAVAILABLE, Transactions, make_engine, reason, redact
from service.store.errors import JobNotFoundError, JobStateError, StoreUnavailableError
from service.store.jsonsafe import json_object
from service.store.models import ArtifactRow, EventRow, JobRow
from service.store.records import STATUSES, TERMINAL, Artifact, Event, Job, JobStatus

log = structlog.get_logger()

# Row lock for changing a job: FOR NO KEY UPDATE on PostgreSQL (does not block inserts of events and
# artifacts that reference the job); SQLite ignores it and relies on BEGIN IMMEDIATE.
LOCK: dict[str, Any] = {"key_share": True}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _check_len(value: str | None, limit: int, what: str) -> None:
    if value is not None and len(value) > limit:
        raise ValueError(f"{what}: at most {limit} characters")


def _job(row: JobRow) -> Job:
    return Job(id=row.id, name=row.name, status=row.status, spec=row.spec,  # type: ignore[arg-type]
               created_at=row.created_at, updated_at=row.updated_at, started_at=row.started_at,
               finished_at=row.finished_at, heartbeat_at=row.heartbeat_at, progress=row.progress or {},
               result=row.result, error=row.error, cancel_requested=row.cancel_requested,
               attempts=row.attempts, worker=row.worker, schedule_id=row.schedule_id, owner=row.owner,
               checkpoint=row.checkpoint)


def _event(row: EventRow) -> Event:
    return Event(id=row.id, job_id=row.job_id, created_at=row.created_at, type=row.type, data=row.data)


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(job_id=row.job_id, name=row.name, path=row.path, content_type=row.content_type,
                    size=row.size, sha256=row.sha256, created_at=row.created_at)


class JobStore:
    """The job database at `url` (any SQLAlchemy URL; SQLite file or postgresql+psycopg://...).

    Construction connects once, so a wrong URL fails at startup with StoreUnavailableError; call
    `migrate()` before first use. `clock` is injectable so tests can age heartbeats.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, clock: Callable[[], datetime] = utcnow,
                 echo: bool = False) -> None:
        self.url = redact(url)
        self._clock = clock
        self._engine = make_engine(url, busy_timeout_ms=busy_timeout_ms, echo=echo)
        self._tx = Transactions(self._engine, f"job database {self.url}")
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (*UNAVAILABLE, sa_exc.DBAPIError) as exc:
            self._engine.dispose()
            raise StoreUnavailableError(f"cannot reach the job database {self.url}: {reason(exc)}") from exc

    @property
    def engine(self) -> Engine:
        """The engine, for other stores on the same database (schedules) to share its pool."""
        return self._engine

    @property
    def backend(self) -> str:
        """The dialect name: sqlite or postgresql."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Close pooled connections (a later call reconnects)."""
        self._engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision; safe to call from every server at startup."""
        try:
            migrations.upgrade(self._engine)
        except UNAVAILABLE as exc:
            raise StoreUnavailableError(f"cannot migrate the job database {self.url}: {reason(exc)}") from exc

    def ping(self) -> bool:
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except sa_exc.SQLAlchemyError:
            return False
        return True

    # -- jobs -------------------------------------------------------------------------------------

    def create_job(self, spec: dict[str, Any], name: str | None = None, owner: str | None = None,
                   schedule_id: str | None = None) -> Job:
        """Queue a job. `spec` is the validated spec dict; `name` defaults to the spec's name."""
        spec = json_object(spec, "spec")
        if name is None and isinstance(spec.get("name"), str):
            name = spec["name"]
        _check_len(name, 200, "name")
        _check_len(owner, 200, "owner")
        _check_len(schedule_id, 64, "schedule_id")
        now = self._clock()
        row = JobRow(id=uuid.uuid4().hex, name=name, status="queued", spec=spec, created_at=now, updated_at=now,
                     progress={}, cancel_requested=False, attempts=0, owner=owner, schedule_id=schedule_id)
        with self._tx(write=True) as s:
            s.add(row)
            s.flush()
            return _job(row)

    def get_job(self, job_id: str) -> Job | None:
        with self._tx() as s:
            row = s.get(JobRow, job_id)
            return _job(row) if row else None

    def list_jobs(self, status: str | None = None, schedule_id: str | None = None, limit: int = 50,
                  offset: int = 0) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and how many match in all."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status: one of {', '.join(STATUSES)}")
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        conds = []
        if status is not None:
            conds.append(JobRow.status == status)
        if schedule_id is not None:
            conds.append(JobRow.schedule_id == schedule_id)
        with self._tx() as s:
            total = s.scalar(select(func.count()).select_from(JobRow).where(*conds)) or 0
            rows = s.scalars(select(JobRow).where(*conds).order_by(JobRow.created_at.desc(), JobRow.id.desc())
                             .limit(limit).offset(offset))
            return [_job(r) for r in rows], total

    def claim_next(self, worker: str) -> Job | None:
        """Take the oldest queued job and mark it running for `worker`; None when the queue is empty.

        PostgreSQL: the candidate row is locked with FOR NO KEY UPDATE SKIP LOCKED, so concurrent claimers
        each lock a different job and never wait on each other. SQLite: BEGIN IMMEDIATE holds the
        database write lock from the SELECT to the COMMIT. In both, the UPDATE also requires
        status='queued' and its row count is checked, so a job can never be handed out twice.
        """
        _check_len(worker, 200, "worker")
        while True:
            with self._tx(write=True) as s:
                job_id = s.scalar(select(JobRow.id).where(JobRow.status == "queued")
                                  .order_by(JobRow.created_at, JobRow.id).limit(1)
                                  .with_for_update(skip_locked=True, **LOCK))
                if job_id is None:
                    return None
                now = self._clock()
                claimed = s.execute(
                    update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
                    .values(status="running", worker=worker, started_at=now, heartbeat_at=now, updated_at=now,
                            attempts=JobRow.attempts + 1)
                    .execution_options(synchronize_session=False))
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    return _job(s.get_one(JobRow, job_id, populate_existing=True))
            # Lost a race that the locks should have prevented; look again rather than fail.

    def heartbeat(self, job_id: str, worker: str) -> Job | None:
        """Record that `worker` is alive and still running the job. None means the job is no longer
        this worker's (requeued, finished): the runner should stop. The returned job carries
        `cancel_requested`, so one call per interval serves both purposes."""
        with self._tx(write=True) as s:
            row = self._locked(s, job_id)
            if row.status != "running" or row.worker != worker:
                return None
            row.heartbeat_at = row.updated_at = self._clock()
            s.flush()
            return _job(row)

    def update_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Replace the job's progress summary (phase, done, planned, best_val_acc, eta_s, ...)."""
        progress = json_object(progress, "progress")
        with self._tx(write=True) as s:
            row = self._locked(s, job_id)
            row.progress = progress
            row.updated_at = self._clock()

    def save_checkpoint(self, job_id: str, state: dict[str, Any]) -> None:
        """Replace the agent's resumable state; it survives a requeue so the next attempt can resume."""
        state = json_object(state, "checkpoint")
        with self._tx(write=True) as s:
            row = self._locked(s, job_id)
            row.checkpoint = state
            row.updated_at = self._clock()

    def finish(self, job_id: str, status: JobStatus, result: dict[str, Any] | None = None,
               error: str | None = None, *, worker: str | None = None) -> Job:
        """End a queued or running job. With `worker`, only that worker's running job: a runner whose
        job was requeued under it gets JobStateError instead of overwriting the new attempt."""
        if status not in TERMINAL:
            raise ValueError(f"status: one of {', '.join(sorted(TERMINAL))}")
        res = json_object(result, "result") if result is not None else None
        with self._tx(write=True) as s:
            row = self._locked(s, job_id)
            if row.status not in ("queued", "running"):
                raise JobStateError(f"job {job_id} already {row.status}")
            if worker is not None and (row.status != "running" or row.worker != worker):
                raise JobStateError(f"job {job_id} is not running on {worker} (status {row.status}, "
                                    f"worker {row.worker})")
            row.status = status
            row.finished_at = row.updated_at = self._clock()
            row.result = res
            row.error = error
            s.flush()
            return _job(row)

    def request_cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one at once (with a "cancelled" event), a running one by setting
        cancel_requested for its runner to notice; a finished one is left as it is."""
        with self._tx(write=True) as s:
            row = s.get(JobRow, job_id, with_for_update=LOCK)
            if row is None:
                return None
            now = self._clock()
            if row.status == "queued":
                row.status, row.finished_at, row.cancel_requested, row.updated_at = "cancelled", now, True, now
                self._add_event(s, job_id, {"type": "cancelled", "reason": "cancelled before it started"})
            elif row.status == "running" and not row.cancel_requested:
                row.cancel_requested, row.updated_at = True, now
            s.flush()
            return _job(row)

    def requeue_orphans(self, worker_prefix: str | None = None, stale_after_s: float | None = None, *,
                        job_ids: Collection[str] | None = None, max_attempts: int | None = None,
                        reason: str | None = None, exclude: Collection[str] = ()) -> list[str]:
        """Put running jobs whose runner is gone back in the queue; returns their ids.

        With no filter: every running job (a single server at startup owns them all). `worker_prefix`:
        only jobs run by workers named so (this host's, at its startup). `stale_after_s`: only jobs
        without a heartbeat for that long (a periodic sweep across servers). `job_ids`: only these
        (a runner whose worker process died). `exclude`: never these (a sweeping runner's own live
        workers). Several filters: all must hold.
        A requeued job keeps its events, progress and checkpoint and gets a "requeued" event. An
        orphan whose cancel was requested is cancelled instead, and one that already used
        `max_attempts` starts is failed (a job that kills its server must not loop forever); both
        get an event saying so.
        """
        conds = [JobRow.status == "running"]
        if worker_prefix is not None:
            conds.append(JobRow.worker.startswith(worker_prefix, autoescape=True))
        if job_ids is not None:
            conds.append(JobRow.id.in_(list(job_ids)))
        if exclude:
            conds.append(JobRow.id.not_in(list(exclude)))
        now = self._clock()
        if stale_after_s is not None:
            cutoff = now - timedelta(seconds=stale_after_s)
            conds.append(or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < cutoff))
        why = reason or (f"no heartbeat for {stale_after_s:g}s" if stale_after_s is not None
                         else "server restarted")
        requeued: list[str] = []
        with self._tx(write=True) as s:
            rows = s.scalars(select(JobRow).where(*conds).order_by(JobRow.created_at, JobRow.id)
                             .with_for_update(skip_locked=True, **LOCK)).all()
            for row in rows:
                info = {"reason": why, "worker": row.worker, "attempts": row.attempts}
                row.updated_at = now
                if row.cancel_requested:
                    row.status, row.finished_at = "cancelled", now
                    self._add_event(s, row.id, {"type": "cancelled", **info})
                elif max_attempts is not None and row.attempts >= max_attempts:
                    row.status, row.finished_at = "failed", now
                    row.error = f"runner lost {row.attempts} times ({why}); giving up"
                    self._add_event(s, row.id, {"type": "failed", "error": row.error, **info})
                else:
                    row.status, row.worker, row.started_at, row.heartbeat_at = "queued", None, None, None
                    self._add_event(s, row.id, {"type": "requeued", **info})
                    requeued.append(row.id)
                log.warning("store.orphan", job_id=row.id, status=row.status, **info)
        return requeued

    # -- events -----------------------------------------------------------------------------------

    def append_event(self, job_id: str, event: dict[str, Any]) -> int:
        """Store one event (a dict with a "type") and return its id, the SSE event id."""
        data = json_object(event, "event")
        with self._tx(write=True) as s:
            self._locked(s, job_id)  # one appender per job at a time: ids commit in increasing order
            return self._add_event(s, job_id, data)

    def events_after(self, job_id: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        """The job's events with id > after_id, oldest first (resume an SSE stream from Last-Event-ID)."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        with self._tx() as s:
            rows = s.scalars(select(EventRow).where(EventRow.job_id == job_id, EventRow.id > after_id)
                             .order_by(EventRow.id).limit(limit))
            return [_event(r) for r in rows]

    # -- artifacts --------------------------------------------------------------------------------

    def add_artifact(self, job_id: str, name: str, path: str, content_type: str, size: int,
                     sha256: str) -> Artifact:
        """Record a file a job wrote (`path` relative to the artifact dir). One per job and name: a
        later attempt that rewrites the file replaces the record."""
        if not name or len(name) > 255:
            raise ValueError("artifact name: 1 to 255 characters")
        _check_len(content_type, 255, "content_type")
        if size < 0:
            raise ValueError("size must be >= 0")
        if not SHA256.match(sha256):
            raise ValueError("sha256: 64 lowercase hex digits")
        with self._tx(write=True) as s:
            self._locked(s, job_id)  # serialises writers of this job's artifacts: no duplicate-key race
            row = s.get(ArtifactRow, (job_id, name))
            if row is None:
                row = ArtifactRow(job_id=job_id, name=name)
                s.add(row)
            row.path, row.content_type, row.size, row.sha256 = path, content_type, size, sha256
            row.created_at = self._clock()
            s.flush()
            return _artifact(row)

    def artifacts(self, job_id: str) -> list[Artifact]:
        with self._tx() as s:
            rows = s.scalars(select(ArtifactRow).where(ArtifactRow.job_id == job_id).order_by(ArtifactRow.name))
            return [_artifact(r) for r in rows]

    def get_artifact(self, job_id: str, name: str) -> Artifact | None:
        with self._tx() as s:
            row = s.get(ArtifactRow, (job_id, name))
            return _artifact(row) if row else None

    # -- queue figures ----------------------------------------------------------------------------

    def counts_by_status(self) -> dict[str, int]:
        """Jobs per status, every status present (0 when none)."""
        with self._tx() as s:
            rows = s.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
            counts = {status: n for status, n in rows}
        return {status: counts.get(status, 0) for status in STATUSES}

    def active_count(self, owner: str) -> int:
        """Queued + running jobs submitted with the token named `owner`, in one statement: a job moving from
        queued to running between two reads must not count twice (a paged count once saw 3 of 2)."""
        with self._tx() as s:
            return s.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.owner == owner, JobRow.status.not_in(TERMINAL))) or 0

    def queue_length(self) -> int:
        with self._tx() as s:
            return s.scalar(select(func.count()).select_from(JobRow).where(JobRow.status == "queued")) or 0

    def finished_durations(self, since: datetime | None = None) -> list[float]:
        """Run time in seconds (start to finish) of every finished job, optionally only those finished since."""
        query = select(JobRow.started_at, JobRow.finished_at).where(
            JobRow.finished_at.is_not(None), JobRow.started_at.is_not(None))
        if since is not None:
            query = query.where(JobRow.finished_at >= since)
        with self._tx() as s:
            return [(end - begin).total_seconds() for begin, end in s.execute(query) if begin and end]

    def count_events(self, kind: str, since: datetime | None = None) -> int:
        """Events of one type over all jobs, optionally only those created since `since` (evaluations per
        second); without `since`, a count that only grows (events are never deleted): a Prometheus counter."""
        query = select(func.count()).select_from(EventRow).where(EventRow.type == kind)
        if since is not None:
            query = query.where(EventRow.created_at >= since)
        with self._tx() as s:
            return s.scalar(query) or 0

    # -- internals --------------------------------------------------------------------------------

    @staticmethod
    def _locked(s: Session, job_id: str) -> JobRow:
        row = s.get(JobRow, job_id, with_for_update=LOCK)
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return row

    def _add_event(self, s: Session, job_id: str, data: dict[str, Any]) -> int:
        """Insert an event; the caller holds the job's row lock."""
        kind = data.get("type")
        if not isinstance(kind, str) or not 0 < len(kind) <= 64:
            raise ValueError('an event needs a "type": a string of 1 to 64 characters')
        row = EventRow(job_id=job_id, created_at=self._clock(), type=kind, data=data)
        s.add(row)
        s.flush()
        return row.id
