"""Job-server load: status polling and SSE followers while searches run, then a submission burst.

Starts a real server (uvicorn, SQLite, embedded Ray) on loopback in a temporary folder, submits
`--searches` searches (2 run at once), and runs `--clients` client threads for a bounded time: half
poll GET /jobs/{id}, half follow an SSE stream. Reports p50/p99 status latency and whether every
follower received every persisted event; then submits a burst of jobs and checks every one is
accounted for (listed, none lost), and cancels them. Bounded in count and time, loopback only.
Results: bench/results/service_load.{json,md} and, for the reliability table, bench/results/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_io import environment, machine, markdown_table, write
from service.client import Client
from tests.conftest import job_dict
from tests.live_server import started, stop


def poll(url: str, seconds: float, out: list[float], errors: list[str]) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                http.get(url).raise_for_status()
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            out.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)


def follow(client: Client, job_id: str, out: list[tuple[str, int]], errors: list[str]) -> None:
    """Read the stream to its end (the searches are cancelled after the polling phase)."""
    try:
        out.append((job_id, sum(1 for event_id, _, _ in client.events(job_id) if event_id is not None)))
    except httpx.HTTPError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def listed_ids(client: Client) -> set[str]:
    ids: set[str] = set()
    offset = 0
    while True:
        page = client.jobs(limit=500, offset=offset)
        ids |= {j["id"] for j in page["items"]}
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--searches", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--burst", type=int, default=500)
    args = parser.parse_args()
    errors: list[str] = []
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:  # cancelled workers may still write
        server = started(Path(tmp), PRUNESEARCH_MAX_CONCURRENT_JOBS=str(args.searches),
                         PRUNESEARCH_MAX_ACTIVE_JOBS_PER_TOKEN=str(args.burst + args.searches + 10))
        try:
            client = server.client()
            searches = [client.submit(job_dict(name=f"search-{i}", strategy={"name": "optuna", "trials": 400,
                                                                              "parallel": 1}))["id"]
                        for i in range(args.searches)]
            pollers, followers = args.clients // 2, args.clients - args.clients // 2
            latencies: list[float] = []
            delivered: list[tuple[str, int]] = []
            polling = [threading.Thread(target=poll, args=(f"{server.url}/api/v1/jobs/{searches[i % len(searches)]}",
                                                           args.seconds, latencies, errors)) for i in range(pollers)]
            following = [threading.Thread(target=follow, args=(server.client(), searches[i % len(searches)],
                                                               delivered, errors), daemon=True)
                         for i in range(followers)]
            for t in polling + following:
                t.start()
            for t in polling:
                t.join(args.seconds + 60)
            for job_id in searches:
                client.cancel(job_id)
            for t in following:
                t.join(120)
            persisted = {j: len([e for e in client.events(j) if e[0] is not None]) for j in searches}
            start = time.perf_counter()
            ids = [client.submit(job_dict(name=f"burst-{i}"))["id"] for i in range(args.burst)]
            burst_s = time.perf_counter() - start
            listed = listed_ids(client)
            for job_id in ids:
                client.cancel(job_id)
            final = {client.job(j)["status"] for j in ids}
        finally:
            stop(server)
    q = statistics.quantiles(latencies, n=100)
    complete = sum(1 for job_id, n in delivered if n == persisted[job_id])
    row: dict[str, Any] = {
        "clients": args.clients, "searches": args.searches, "seconds": args.seconds,
        "status_requests": len(latencies), "status_p50_ms": q[49], "status_p99_ms": q[98],
        "followers": followers, "followers_complete": complete, "events_persisted": sum(persisted.values()),
        "burst": args.burst, "burst_seconds": burst_s, "burst_accounted": len(set(ids) & listed),
        "jobs_lost": args.burst - len(set(ids) & listed), "client_errors": len(errors),
        "burst_final_statuses": sorted(final),
    }
    print(json.dumps(row), errors[:5])
    env = environment()
    md = [f"# Job-server load ({machine(env)})", "",
          f"{args.searches} Optuna searches running while {args.clients} clients poll status and follow SSE for "
          f"{args.seconds:.0f} s; then a burst of {args.burst} submissions.", "",
          markdown_table([row], [k for k in row if k != "burst_final_statuses"])]
    write("service_load", {"environment": env, "rows": [row], "errors": errors[:20]}, "\n".join(md))


if __name__ == "__main__":
    main()
