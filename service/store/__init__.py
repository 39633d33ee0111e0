"""Durable job store: jobs, their events and artifacts, and the work queue (SQLite or PostgreSQL)."""

from __future__ import annotations

from service.store.errors import JobNotFoundError, JobStateError, StoreError, StoreUnavailableError
from service.store.records import STATUSES, TERMINAL, Artifact, Event, Job, JobStatus
from service.store.store import JobStore

__all__ = [
    "STATUSES",
    "TERMINAL",
    "Artifact",
    "Event",
    "Job",
    "JobNotFoundError",
    "JobStateError",
    "JobStatus",
    "JobStore",
    "StoreError",
    "StoreUnavailableError",
]
