"""Job-server load: status polling and SSE followers while a search runs, then a submission burst.

Starts a real server (uvicorn, SQLite) on loopback in a temporary folder, submits one search, and
runs N client threads for a bounded time: half poll GET /jobs/{id}, half follow its SSE stream.
Reports p50/p99 status latency, events delivered per follower vs events persisted, then submits a
burst of jobs and checks every one is accounted for (listed, none lost), and cancels them.
Bounded in count and time, loopback only.
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

from bench.results_io import environment, markdown_table, write
from service.client import Client
from tests.conftest import job_dict
from tests.test_server import Server, free_port


def poll(url: str, seconds: float, out: list[float]) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            http.get(url).raise_for_status()
            out.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)


def follow(client: Client, job_id: str, out: list[int]) -> None:
    """Read the stream to its end (the job is cancelled after the polling phase)."""
    out.append(sum(1 for event_id, _, _ in client.events(job_id) if event_id is not None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = Server(f"http://127.0.0.1:{port}", Path(tmp), port)
        server.start()
        try:
            client = server.client()
            search = job_dict(strategy={"name": "optuna", "trials": 400, "parallel": 1})
            job = client.submit(search)
            pollers, followers = args.clients // 2, args.clients - args.clients // 2
            latencies: list[float] = []
            delivered: list[int] = []
            polling = [threading.Thread(target=poll, args=(f"{server.url}/api/v1/jobs/{job['id']}", args.seconds,
                                                           latencies)) for _ in range(pollers)]
            following = [threading.Thread(target=follow, args=(server.client(), job["id"], delivered), daemon=True)
                         for _ in range(followers)]
            for t in polling + following:
                t.start()
            for t in polling:
                t.join(args.seconds + 30)
            client.cancel(job["id"])
            for t in following:
                t.join(60)
            persisted = len([e for e in client.events(job["id"]) if e[0] is not None])
            start = time.perf_counter()
            ids = [client.submit(job_dict(name=f"burst-{i}"))["id"] for i in range(args.burst)]
            burst_s = time.perf_counter() - start
            listed = {j["id"] for j in client.jobs(limit=500)["items"]}
            for job_id in ids:
                client.cancel(job_id)
        finally:
            if server.proc is not None:
                server.proc.terminate()
                server.proc.wait(10)
    q = statistics.quantiles(latencies, n=100)
    row: dict[str, Any] = {
        "clients": args.clients, "seconds": args.seconds, "status_requests": len(latencies),
        "status_p50_ms": q[49], "status_p99_ms": q[98], "followers": followers,
        "events_persisted": persisted, "followers_complete": sum(1 for d in delivered if d == persisted),
        "burst": args.burst, "burst_seconds": burst_s, "burst_accounted": len(set(ids) & listed),
        "lost": args.burst - len(set(ids) & listed),
    }
    print(json.dumps(row))
    md = [f"# Job-server load ({environment()['cpu']}, {environment()['cores']} cores)", "",
          "One optuna search running while clients poll status and follow SSE; then a submission burst.", "",
          markdown_table([row], list(row))]
    write("service_load", {"environment": environment(), "rows": [row]}, "\n".join(md))


if __name__ == "__main__":
    main()
