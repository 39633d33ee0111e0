"""What the store hands out: frozen snapshots, never live ORM rows.

Callers use them from request handlers and runner threads; a detached ORM object would lazy-load
(or fail) on another thread, a frozen copy cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    name: str | None
    status: JobStatus
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    attempts: int
    worker: str | None
    schedule_id: str | None
    owner: str | None
    checkpoint: dict[str, Any] | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    job_id: str
    created_at: datetime
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Artifact:
    job_id: str
    name: str
    path: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime
