"""Prometheus exposition, computed from the job store at scrape time.

Workers run in other processes (and other servers may share the database), so in-process counters
would see only part of the work; the store sees all of it. Each scrape therefore reads the figures
from the database and renders them as gauges, counters and a histogram. The counters (`_total`) are
totals the store only ever adds to (events and finished jobs are never deleted), so Prometheus'
`rate()` and `increase()` work on them; the 60 s gauge stays for dashboards that read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from service.store import JobStore
from service.store.records import STATUSES
from service.store.store import utcnow

RATE_WINDOW_S = 60.0
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
# Job durations span seconds (a FLOPs bisection) to hours (AMC on a big model).
DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0)

Collect = Callable[[JobStore], Iterable[Metric]]


def job_metrics(store: JobStore) -> Iterable[Metric]:
    counts = store.counts_by_status()
    jobs = GaugeMetricFamily("prunesearch_jobs", "jobs by status", labels=["status"])
    for name in STATUSES:
        jobs.add_metric([name], counts.get(name, 0))
    yield jobs
    yield GaugeMetricFamily("prunesearch_queue_length", "jobs waiting to run", value=store.queue_length())
    since = utcnow() - timedelta(seconds=RATE_WINDOW_S)
    yield GaugeMetricFamily("prunesearch_evaluations_per_second",
                            f"candidate evaluations finished per second over the last {RATE_WINDOW_S:.0f} s",
                            value=store.count_events("evaluation", since) / RATE_WINDOW_S)
    yield CounterMetricFamily("prunesearch_evaluations", "candidate evaluations finished, over all jobs",
                              value=store.count_events("evaluation"))
    finished = CounterMetricFamily("prunesearch_jobs_finished", "jobs that reached a final status", labels=["status"])
    for final in FINAL_STATUSES:
        finished.add_metric([final], counts.get(final, 0))
    yield finished
    yield duration_histogram(store.finished_durations())


def duration_histogram(durations: list[float]) -> HistogramMetricFamily:
    buckets, seen = [], 0
    ordered = sorted(durations)
    for bound in DURATION_BUCKETS:
        while seen < len(ordered) and ordered[seen] <= bound:
            seen += 1
        buckets.append((repr(bound), seen))
    buckets.append(("+Inf", len(ordered)))
    return HistogramMetricFamily("prunesearch_job_duration_seconds", "run time of finished jobs (start to end)",
                                 buckets=buckets, sum_value=sum(ordered))


# Other parts of the service (schedules) append their collectors here.
COLLECTORS: list[Collect] = [job_metrics]


def render(store: JobStore) -> bytes:
    """One scrape: every registered collector, read from the store now."""

    class Snapshot:
        def collect(self) -> Iterable[Metric]:
            for collect in COLLECTORS:
                yield from collect(store)

    registry = CollectorRegistry()
    registry.register(Snapshot())
    return generate_latest(registry)
