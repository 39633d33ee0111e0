"""A real job server for tests: a uvicorn process over HTTP on a free loopback port, its own SQLite store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.client import Client

TOKEN, READ_TOKEN = "s3cret-token", "read-only-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    db: str | None = None  # SQLAlchemy URL; default: a SQLite file in `root`

    def start(self) -> None:
        env = {**os.environ, "PRUNESEARCH_TOKENS": json.dumps({"ci": TOKEN}),
               "PRUNESEARCH_READ_TOKENS": json.dumps({"viewer": READ_TOKEN}), "PRUNESEARCH_STALE_AFTER_S": "2",
               "PRUNESEARCH_LUT_CACHE_DIR": str(self.root / "lut"), **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), "--db",
             self.db or f"sqlite:///{self.root / 'jobs.db'}", "--artifact-dir", str(self.root / "artifacts")],
            env=env, stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError((self.root / "server.log").read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def client(self, token: str | None = TOKEN) -> Client:
        return Client(self.url, token)


def started(root: Path, db: str | None = None, **env: str) -> Server:
    port = free_port()
    srv = Server(f"http://127.0.0.1:{port}", root, port, env=env, db=db)
    srv.start()
    return srv


def stop(srv: Server) -> None:
    if srv.proc and srv.proc.poll() is None:
        srv.proc.terminate()
        srv.proc.wait(10)
