"""Scheduled searches: a cron trigger, a job template and a weights source that training keeps updating.

Modules: `cron` (triggers), `store` (schedules and their runs, same database as the jobs),
`weights` (newest checkpoint, hash, snapshot), `launch` (one firing -> one job, exactly once),
`compare` (run vs previous run, regression flags), `follow` (finished runs: compare, notify),
`scheduler` (APScheduler wiring), `metrics` (Prometheus).
"""

from __future__ import annotations
