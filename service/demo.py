"""`make demo`: the product as a user meets it, on the embedded defaults.

Starts the job server (SQLite store, embedded Ray) with a one-off token, submits the digits demo job
through the REST API, shows its progress from the event stream, fetches the artifacts and prints the
dashboard URL, then keeps serving until Ctrl-C (or stops at once with `--exit`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from service.cli import _watch, summary_table
from service.client import Client
from service.spec import DEMO_JOB, load_spec


def free_port(preferred: int) -> int:
    """`preferred` when it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def start_server(folder: Path, port: int, token: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PRUNESEARCH_TOKENS": json.dumps({"demo": token})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--db", f"sqlite:///{folder / 'jobs.db'}",
         "--artifact-dir", str(folder / "artifacts")], env=env, stdout=open(folder / "server.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); see {folder / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"the server did not answer in 120 s; see {folder / 'server.log'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.demo", description=__doc__)
    parser.add_argument("--job", default=str(DEMO_JOB))
    parser.add_argument("--dir", default="runs/demo", help="store, artifacts and server log")
    parser.add_argument("--port", type=int, default=8000, help="taken: any free port")
    parser.add_argument("--exit", action="store_true", help="stop the server when the job ends")
    args = parser.parse_args(argv)
    folder = Path(args.dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    token, port = secrets.token_urlsafe(16), free_port(args.port)
    url = f"http://127.0.0.1:{port}"
    spec = load_spec(args.job)
    server = start_server(folder, port, token)
    try:
        job = Client(url, token).submit(spec.model_dump(mode="json", exclude_none=True))
        print(f"dashboard: {url}/jobs/{job['id']}   (token for submit/cancel: {token})", flush=True)
        code = _watch(argparse.Namespace(server=url, token=token, quiet=False), job["id"])
        if code == 0:
            Client(url, token).fetch(job["id"], folder / "result")
            print(summary_table(json.loads((folder / "result" / "report.json").read_text())))
            print(f"artifacts: {folder / 'result'}")
        if not args.exit:
            print(f"serving {url} until Ctrl-C", flush=True)
            server.wait()
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(15)


if __name__ == "__main__":
    sys.exit(main())
