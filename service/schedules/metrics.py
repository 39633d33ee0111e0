"""Prometheus figures of scheduled runs, read from the database at scrape time (see service.api.metrics)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from service.schedules.store import ScheduleStore
from service.store import JobStore


def schedule_metrics(store: JobStore) -> Iterable[Metric]:
    schedules = ScheduleStore.of(store)
    runs = GaugeMetricFamily("prunesearch_schedule_runs", "scheduled runs by status", labels=["status"])
    for status, count in schedules.run_counts().items():
        runs.add_metric([status], count)
    yield runs
    total = GaugeMetricFamily("prunesearch_schedule_regressions", "scheduled runs flagged as a regression",
                              labels=["schedule"])
    last = GaugeMetricFamily("prunesearch_schedule_last_run_regressed",
                             "1 when the schedule's latest compared run is a regression", labels=["schedule"])
    for name, count, regressed in schedules.regressions():
        total.add_metric([name], count)
        last.add_metric([name], 1 if regressed else 0)
    yield total
    yield last


def register() -> None:
    """Add the collector to /metrics once."""
    from service.api.metrics import COLLECTORS

    if schedule_metrics not in COLLECTORS:
        COLLECTORS.append(schedule_metrics)
