"""`prunesearch schedule add|list|runs|pause|resume|run|rm` (over REST) and `prunesearch scheduler`
(the scheduler alone, for deployments whose API servers run with PRUNESEARCH_SCHEDULER=off)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from service.client import add_connection_options
from service.spec import SpecError


def _client(args: argparse.Namespace) -> Any:
    from service.client import Client

    return Client(args.server, args.token)


def read_template(path: str) -> dict[str, Any]:
    """A job file as a schedule template: validated here (exit 2 naming the field), weights left out."""
    from service.spec import load_spec

    spec = load_spec(path)
    template: dict[str, Any] = spec.model_dump(mode="json", exclude_unset=True)
    if template.get("model", {}).pop("weights", None) is not None:
        print(f"note: {path}: model.weights ignored; the schedule's weights source supplies it", file=sys.stderr)
    return template


def cmd_add(args: argparse.Namespace) -> int:
    if (args.weights_path is None) == (args.weights_upload is None):
        raise SpecError("give exactly one of --weights-path or --weights-upload")
    body: dict[str, Any] = {
        "name": args.name, "cron": args.cron, "timezone": args.timezone, "job": read_template(args.job),
        "weights": {"path": args.weights_path} if args.weights_path else {"upload_id": args.weights_upload},
        "missed": args.missed, "grace_s": args.grace_s, "skip_unchanged": not args.run_unchanged,
        "warm_start": not args.no_warm_start, "paused": args.paused, "webhook_url": args.webhook,
        "thresholds": {"accuracy_drop": args.accuracy_drop, "latency_rise": args.latency_rise,
                       "budget_miss": not args.ignore_budget_miss},
    }
    s = _client(args).create_schedule(body)
    print(json.dumps({k: s[k] for k in ("id", "name", "cron", "timezone", "next_run_at")}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    items = _client(args).schedules()["items"]
    for s in items:
        state = "paused" if s["paused"] else f"next {s['next_run_at']}"
        print(f"{s['id']}  {s['name'][:30]:<30}  {s['cron']:<18} {s['timezone']:<16} {state}")
    print(f"{len(items)} schedules")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    for r in _client(args).schedule_runs(args.id, args.limit)["items"]:
        flags = ",".join(r["flags"]) or "-"
        print(f"{r['fired_at']}  {r['status']:<9} {r['trigger']:<8} job {r['job_id'] or '-':<32}  flags {flags}"
              f"{'  ' + r['reason'] if r.get('reason') else ''}")
    return 0


def cmd_simple(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        client = _client(args)
        if action == "rm":
            client.delete_schedule(args.id)
            print(json.dumps({"id": args.id, "deleted": True}))
        elif action == "run":
            r = client.run_schedule(args.id, force=not args.only_if_changed)
            print(json.dumps({k: r[k] for k in ("id", "status", "job_id", "reason")}))
        else:
            s = client.pause_schedule(args.id) if action == "pause" else client.resume_schedule(args.id)
            print(json.dumps({"id": s["id"], "paused": s["paused"], "next_run_at": s["next_run_at"]}))
        return 0

    return run


def cmd_scheduler(args: argparse.Namespace) -> int:
    """Run the scheduler alone until SIGTERM/SIGINT."""
    from service.config import Settings
    from service.schedules.scheduler import SchedulerHost
    from service.store import JobStore, StoreUnavailableError

    overrides = {k: v for k, v in {"database_url": args.db, "artifact_dir": args.artifact_dir}.items() if v}
    settings = Settings(**overrides)
    try:
        store = JobStore(settings.database_url)
        store.migrate()
    except StoreUnavailableError as exc:
        print(f"prunesearch scheduler: error: {exc}", file=sys.stderr)
        return 1
    host = SchedulerHost(settings, store)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    host.start()
    print(f"scheduler: {store.url}", flush=True)
    stop.wait()
    host.stop()
    return 0


def add_commands(sub: Any) -> None:
    """Register `schedule ...` (client commands) and `scheduler` on the top-level subparsers."""
    schedule = sub.add_parser("schedule", help="scheduled searches: add, list, runs, pause, resume, run, rm")
    actions = schedule.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return add_connection_options(actions.add_parser(name, help=help_text))

    add = action("add", "create a schedule")
    add.add_argument("name")
    add.add_argument("--cron", required=True, help='5 crontab fields ("0 2 * * *"), or 6 with seconds first')
    add.add_argument("--timezone", default="UTC")
    add.add_argument("--job", required=True, help="job file (YAML or JSON): the template of every run")
    add.add_argument("--weights-path", default=None, help="a checkpoint, or a folder (newest *.safetensors) inside "
                                                          "the server's PRUNESEARCH_SCHEDULE_WEIGHTS_ROOTS")
    add.add_argument("--weights-upload", default=None, help="an uploaded weights id (POST /weights)")
    add.add_argument("--missed", choices=["run_once", "skip"], default="run_once")
    add.add_argument("--grace-s", type=float, default=3600.0)
    add.add_argument("--run-unchanged", action="store_true", help="run even when the weights did not change")
    add.add_argument("--no-warm-start", action="store_true")
    add.add_argument("--accuracy-drop", type=float, default=0.01)
    add.add_argument("--latency-rise", type=float, default=0.10)
    add.add_argument("--ignore-budget-miss", action="store_true")
    add.add_argument("--webhook", default=None, help="URL that gets a JSON notice of regressions and failures")
    add.add_argument("--paused", action="store_true")
    add.set_defaults(func=cmd_add)
    action("list", "list schedules").set_defaults(func=cmd_list)
    runs = action("runs", "a schedule's run history")
    runs.add_argument("id")
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)
    for name, help_text in (("pause", "stop firing"), ("resume", "fire again"), ("run", "run now"),
                            ("rm", "delete a schedule and its run history")):
        p = action(name, help_text)
        p.add_argument("id")
        if name == "run":
            p.add_argument("--only-if-changed", action="store_true", help="skip when the weights did not change")
        p.set_defaults(func=cmd_simple(name))

    scheduler = sub.add_parser("scheduler", help="run the schedule scheduler alone (one per database; start API "
                                                 "servers with PRUNESEARCH_SCHEDULER=off)")
    scheduler.add_argument("--db", default=None, help="database URL (default: PRUNESEARCH_DATABASE_URL)")
    scheduler.add_argument("--artifact-dir", default=None, help="the API servers' artifact folder")
    scheduler.set_defaults(func=cmd_scheduler)

