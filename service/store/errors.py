"""Store errors: the server maps these to HTTP statuses, so each names one cause."""

from __future__ import annotations


class StoreError(RuntimeError):
    """Base class of every job-store error."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached (or used); the message names the URL without its password."""


class JobNotFoundError(StoreError, LookupError):
    """A method that changes a job was given an id that no job has."""


class JobStateError(StoreError, ValueError):
    """The job is not in a state that allows the change (e.g. finishing a job that already finished)."""
