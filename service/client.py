"""HTTP client for the job server, used by the CLI: submit, status, watch (SSE), cancel, list, fetch."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_connection_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--server` and `--token`, which every command that talks to the server takes (read by `Client`)."""
    parser.add_argument("--server", default=None, help=f"default: $PRUNESEARCH_SERVER or {DEFAULT_SERVER}")
    parser.add_argument("--token", default=None, help="default: $PRUNESEARCH_TOKEN")
    return parser


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: Any) -> None:
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {format_detail(detail)}")


class ServerUnreachableError(RuntimeError):
    """No HTTP answer at all (refused, DNS, timeout, TLS): not an HTTP status, so never "HTTP 0"."""

    def __init__(self, url: str, reason: BaseException) -> None:
        self.url = url
        super().__init__(f"cannot reach server at {url}: {reason or type(reason).__name__}")


def format_detail(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI validation errors: name each field
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in detail)
    return str(detail)


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30) -> None:
        self.base = (server or os.environ.get("PRUNESEARCH_SERVER") or DEFAULT_SERVER).rstrip("/") + "/api/v1"
        token = token or os.environ.get("PRUNESEARCH_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)

    @property
    def server(self) -> str:
        return self.base.removesuffix("/api/v1")

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(self.server, exc) from exc

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, self.base + path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else response

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/jobs", json=spec)
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/jobs/{job_id}")
        return result

    def jobs(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        result: dict[str, Any] = self._call("GET", "/jobs", params=params)
        return result

    def upload(self, path: Path) -> dict[str, Any]:
        """POST a safetensors file to /weights (streamed from disk); the answer holds `upload:<id>`."""
        with path.open("rb") as fh:
            result: dict[str, Any] = self._call("POST", "/weights", content=fh,
                                                headers={"Content-Type": "application/octet-stream",
                                                         "Content-Length": str(path.stat().st_size)})
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/jobs/{job_id}/cancel")
        return result

    # -- schedules --------------------------------------------------------------------------------

    def schedules(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/schedules")
        return result

    def schedule(self, schedule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/schedules/{schedule_id}")
        return result

    def create_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/schedules", json=body)
        return result

    def update_schedule(self, schedule_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", f"/schedules/{schedule_id}", json=changes)
        return result

    def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/schedules/{schedule_id}/pause")
        return result

    def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/schedules/{schedule_id}/resume")
        return result

    def run_schedule(self, schedule_id: str, force: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/schedules/{schedule_id}/run",
                                            params={"force": str(force).lower()})
        return result

    def schedule_runs(self, schedule_id: str, limit: int = 100) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/schedules/{schedule_id}/runs", params={"limit": limit})
        return result

    def delete_schedule(self, schedule_id: str) -> None:
        self._call("DELETE", f"/schedules/{schedule_id}")

    def events(self, job_id: str, after: int = 0, reconnect_s: float = 300.0
               ) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
        """(id, type, data) for every event, reconnecting with Last-Event-ID if the stream drops (a server
        restart) for up to `reconnect_s`; a server that never answered is reported at once."""
        last = after
        connected, lost_at = False, 0.0
        while True:
            try:
                with self.http.stream("GET", f"{self.base}/jobs/{job_id}/events",
                                      headers={"Last-Event-ID": str(last)}, timeout=None) as response:
                    if response.status_code >= 400:
                        raise ApiError(response.status_code, response.read().decode())
                    connected, lost_at = True, 0.0
                    for event_id, kind, data in _parse_sse(response.iter_lines()):
                        if event_id is not None:
                            last = event_id
                        yield event_id, kind, data
                        if kind == "end":
                            return
            except httpx.TransportError as exc:
                now = time.monotonic()
                lost_at = lost_at or now
                if not connected or now - lost_at > reconnect_s:
                    raise ServerUnreachableError(self.server, exc) from exc
                time.sleep(1.0)  # server restarting: resume where we were

    def fetch(self, job_id: str, out: Path) -> list[str]:
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for artifact in self._call("GET", f"/jobs/{job_id}/artifacts"):
            response = self._send("GET", self.server + artifact["url"])
            if response.status_code >= 400:
                raise ApiError(response.status_code, response.text)
            (out / artifact["name"]).write_bytes(response.content)
            names.append(artifact["name"])
        return names


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
    event_id: int | None = None
    kind, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield event_id, kind, json.loads(data)
            event_id, kind, data = None, "message", ""
        elif line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
