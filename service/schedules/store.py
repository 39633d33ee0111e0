"""ScheduleStore: schedules and their runs, in the job database (tables in service/store/models.py).

Like JobStore, every method is one short transaction returning frozen snapshots. `claim_run` is the
exactly-once gate: the (schedule_id, fired_at) unique constraint lets one insert per fire time succeed,
whichever process (API worker, second server, standalone scheduler) tries it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy import exc as sa_exc

from service.store import JobStore
from service.store.engine import Transactions
from service.store.jsonsafe import json_object
from service.store.models import ScheduleRow, ScheduleRunRow
from service.store.store import utcnow

OPEN = ("starting", "queued", "running")  # a run whose job may still change
RUN_STATUSES = ("starting", "queued", "running", "succeeded", "failed", "cancelled", "skipped")


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    name: str
    cron: str
    timezone: str
    paused: bool
    weights: dict[str, Any]
    job: dict[str, Any]
    missed: str
    grace_s: float
    skip_unchanged: bool
    warm_start: bool
    thresholds: dict[str, Any]
    webhook_url: str | None
    owner: str | None
    created_at: datetime
    updated_at: datetime
    last_run_at: datetime | None


@dataclass(frozen=True, slots=True)
class ScheduleRun:
    id: str
    schedule_id: str
    fired_at: datetime
    trigger: str
    status: str
    reason: str | None
    job_id: str | None
    weights_sha256: str | None
    weights_ref: str | None
    comparison: dict[str, Any] | None
    regression: bool
    flags: list[str]
    webhook: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


SCHEDULE_FIELDS = frozenset(Schedule.__slots__) - {"id", "created_at", "updated_at"}
RUN_FIELDS = frozenset({"status", "reason", "job_id", "weights_sha256", "weights_ref", "comparison", "regression",
                        "flags", "webhook"})


def _schedule(row: ScheduleRow) -> Schedule:
    return Schedule(**{name: getattr(row, name) for name in Schedule.__slots__})


def _run(row: ScheduleRunRow) -> ScheduleRun:
    return ScheduleRun(**{name: getattr(row, name) for name in ScheduleRun.__slots__})


class ScheduleStore:
    """Schedules on `engine` (the job store's: same database, same connection rules)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self._clock = clock
        self._tx = Transactions(engine, "schedule database")

    @classmethod
    def of(cls, jobs: JobStore) -> ScheduleStore:
        """The schedule store sharing a job store's engine (and its pool)."""
        return cls(jobs.engine)

    # -- schedules --------------------------------------------------------------------------------

    def create(self, **fields: Any) -> Schedule:
        now = self._clock()
        row = ScheduleRow(id=uuid.uuid4().hex, created_at=now, updated_at=now, last_run_at=None,
                          **self._clean(fields))
        with self._tx(write=True) as s:
            s.add(row)
            s.flush()
            return _schedule(row)

    def get(self, schedule_id: str) -> Schedule | None:
        with self._tx() as s:
            row = s.get(ScheduleRow, schedule_id)
            return _schedule(row) if row else None

    def all(self) -> list[Schedule]:
        with self._tx() as s:
            return [_schedule(r) for r in s.scalars(select(ScheduleRow).order_by(ScheduleRow.created_at,
                                                                                  ScheduleRow.id))]

    def update(self, schedule_id: str, **fields: Any) -> Schedule | None:
        with self._tx(write=True) as s:
            row = s.get(ScheduleRow, schedule_id, with_for_update=True)
            if row is None:
                return None
            for name, value in self._clean(fields).items():
                setattr(row, name, value)
            row.updated_at = self._clock()
            s.flush()
            return _schedule(row)

    def delete(self, schedule_id: str) -> bool:
        with self._tx(write=True) as s:
            s.execute(delete(ScheduleRunRow).where(ScheduleRunRow.schedule_id == schedule_id))
            gone = s.execute(delete(ScheduleRow).where(ScheduleRow.id == schedule_id))
            return bool(gone.rowcount)  # type: ignore[attr-defined]

    # -- runs -------------------------------------------------------------------------------------

    def claim_run(self, schedule_id: str, fired_at: datetime, trigger: str, status: str = "starting",
                  reason: str | None = None) -> ScheduleRun | None:
        """Record that `schedule_id` fired at `fired_at`; None when that fire time already has a run
        (another process claimed it first). The only way a run is created."""
        now = self._clock()
        row = ScheduleRunRow(id=uuid.uuid4().hex, schedule_id=schedule_id, fired_at=fired_at, trigger=trigger,
                             status=status, reason=reason, regression=False, flags=[], created_at=now,
                             updated_at=now)
        try:
            with self._tx(write=True) as s:
                s.add(row)
                s.flush()
                run = _run(row)
                if status != "skipped":
                    s.execute(update(ScheduleRow).where(ScheduleRow.id == schedule_id).values(last_run_at=fired_at))
                return run
        except sa_exc.IntegrityError:
            return None

    def update_run(self, run_id: str, *, only_if: Collection[str] | None = None, **fields: Any) -> ScheduleRun | None:
        """Change a run; with `only_if`, only while its status is one of those (None otherwise): an
        atomic claim, so of two processes finishing the same run only one compares and notifies."""
        unknown = set(fields) - RUN_FIELDS
        if unknown:
            raise ValueError(f"unknown run fields {sorted(unknown)}")
        if fields.get("comparison") is not None:
            fields["comparison"] = json_object(fields["comparison"], "comparison")
        with self._tx(write=True) as s:
            query = update(ScheduleRunRow).where(ScheduleRunRow.id == run_id)
            if only_if is not None:
                query = query.where(ScheduleRunRow.status.in_(list(only_if)))
            changed = s.execute(query.values(**fields, updated_at=self._clock()))
            if not changed.rowcount:  # type: ignore[attr-defined]
                return None
            row = s.get_one(ScheduleRunRow, run_id, populate_existing=True)
            return _run(row)

    def get_run(self, run_id: str) -> ScheduleRun | None:
        with self._tx() as s:
            row = s.get(ScheduleRunRow, run_id)
            return _run(row) if row else None

    def runs(self, schedule_id: str, limit: int = 100) -> list[ScheduleRun]:
        """Newest first."""
        with self._tx() as s:
            rows = s.scalars(select(ScheduleRunRow).where(ScheduleRunRow.schedule_id == schedule_id)
                             .order_by(ScheduleRunRow.fired_at.desc(), ScheduleRunRow.id.desc()).limit(limit))
            return [_run(r) for r in rows]

    def latest_run(self, schedule_id: str, statuses: Collection[str], before: datetime | None = None
                   ) -> ScheduleRun | None:
        """The most recent run in one of `statuses`, optionally fired before `before`."""
        conds = [ScheduleRunRow.schedule_id == schedule_id, ScheduleRunRow.status.in_(list(statuses))]
        if before is not None:
            conds.append(ScheduleRunRow.fired_at < before)
        with self._tx() as s:
            row = s.scalars(select(ScheduleRunRow).where(*conds)
                            .order_by(ScheduleRunRow.fired_at.desc(), ScheduleRunRow.id.desc()).limit(1)).first()
            return _run(row) if row else None

    def open_runs(self) -> list[ScheduleRun]:
        with self._tx() as s:
            rows = s.scalars(select(ScheduleRunRow).where(ScheduleRunRow.status.in_(OPEN))
                             .order_by(ScheduleRunRow.fired_at))
            return [_run(r) for r in rows]

    # -- figures ----------------------------------------------------------------------------------

    def run_counts(self) -> dict[str, int]:
        """Runs per status (every status present) over all schedules."""
        with self._tx() as s:
            counts = {status: n for status, n in
                      s.execute(select(ScheduleRunRow.status, func.count()).group_by(ScheduleRunRow.status))}
        return {status: counts.get(status, 0) for status in RUN_STATUSES}

    def regressions(self) -> list[tuple[str, int, bool]]:
        """(schedule name, regressions flagged, whether its latest compared run regressed) per schedule."""
        with self._tx() as s:
            out = []
            for row in s.scalars(select(ScheduleRow).order_by(ScheduleRow.name)):
                total = s.scalar(select(func.count()).select_from(ScheduleRunRow).where(
                    ScheduleRunRow.schedule_id == row.id, ScheduleRunRow.regression.is_(True))) or 0
                last = s.scalars(select(ScheduleRunRow.regression).where(
                    ScheduleRunRow.schedule_id == row.id, ScheduleRunRow.comparison.is_not(None))
                    .order_by(ScheduleRunRow.fired_at.desc()).limit(1)).first()
                out.append((row.name, int(total), bool(last)))
            return out

    # -- internals --------------------------------------------------------------------------------

    @staticmethod
    def _clean(fields: dict[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - SCHEDULE_FIELDS
        if unknown:
            raise ValueError(f"unknown schedule fields {sorted(unknown)}")
        for name in ("job", "weights", "thresholds"):
            if name in fields:
                fields[name] = json_object(fields[name], name)
        return fields
