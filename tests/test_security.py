"""Security properties of the job server, checked against a real uvicorn process over HTTP.

Tokens guard every mutating endpoint and are never logged; nothing from a request is unpickled or
imported; bodies, uploads, numeric fields and active jobs per token are bounded; artifact names
cannot walk out of the artifact folder.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from service.spec import JobSpec
from tests.conftest import job_dict
from tests.live_server import READ_TOKEN, TOKEN, Server, free_port, started, stop
from tests.test_server import wait_for

OTHER_TOKEN = "second-writer-token"
BOGUS_TOKEN = "bogus-token-never-configured"
MAX_UPLOAD, MAX_SPEC, MAX_ACTIVE = 64 * 1024, 8 * 1024, 2
SLOW: dict[str, Any] = {"strategy": {"name": "optuna", "trials": 500, "parallel": 1}}  # stays active a while


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("security")
    (root / "evilmod.py").write_text(f"open({str(root / 'imported.marker')!r}, 'w').close()\n"
                                     "def build(**kw):\n    raise SystemExit('imported')\n")
    server = started(root, PRUNESEARCH_TOKENS=json.dumps({"ci": TOKEN, "other": OTHER_TOKEN}),
                     PRUNESEARCH_MAX_UPLOAD_BYTES=str(MAX_UPLOAD), PRUNESEARCH_MAX_SPEC_BYTES=str(MAX_SPEC),
                     PRUNESEARCH_MAX_ACTIVE_JOBS_PER_TOKEN=str(MAX_ACTIVE), PYTHONPATH=str(root))
    yield server
    stop(server)


def cancel_all(server: Server) -> None:
    client = server.client()
    for state in ("queued", "running"):
        for job in client.jobs(state, 500)["items"]:
            client.cancel(job["id"])
    for job in client.jobs(None, 500)["items"]:
        wait_for(client, job["id"], {"succeeded", "failed", "cancelled"})


# -- authentication ------------------------------------------------------------------------------

def test_every_mutating_endpoint_needs_a_write_token(srv: Server) -> None:
    paths = httpx.get(f"{srv.url}/openapi.json").json()["paths"]
    mutating = [(method.upper(), path) for path, ops in paths.items() for method in ops
                if method in ("post", "put", "patch", "delete")]
    assert ("POST", "/api/v1/jobs") in mutating and ("POST", "/api/v1/weights") in mutating
    for method, path in mutating:
        url = srv.url + path.replace("{", "").replace("}", "")  # any id: auth is checked before the lookup
        assert httpx.request(method, url, json={}).status_code == 401, (method, path)
        assert httpx.request(method, url, json={}, headers=auth(BOGUS_TOKEN)).status_code == 401, (method, path)
        r = httpx.request(method, url, json={}, headers=auth(READ_TOKEN))
        assert r.status_code == 403 and "only read" in r.json()["detail"], (method, path)


def test_tokens_are_compared_in_constant_time_against_every_configured_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from pydantic import SecretStr

    from service.api import deps

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    tokens = {"a": SecretStr("first-secret"), "b": SecretStr("second-secret"), "c": SecretStr("third-secret")}
    assert deps._match("first-secret", dict(tokens)) == "a"
    assert len(calls) == 3  # no early exit on the first match: the time does not tell which token matched
    assert deps._match("nope", dict(tokens)) is None and len(calls) == 6


@pytest.mark.slow
def test_no_tokens_refuses_to_bind_beyond_loopback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNESEARCH_")}
    proc = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port",
                           str(free_port()), "--db", f"sqlite:///{tmp_path / 'x.db'}"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to serve beyond loopback without tokens (set PRUNESEARCH_TOKENS)" in proc.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching anything


def test_no_tokens_on_loopback_serves_reads_but_no_writes(tmp_path: Path) -> None:
    server = started(tmp_path, PRUNESEARCH_TOKENS="{}", PRUNESEARCH_READ_TOKENS="{}")
    try:
        assert httpx.get(f"{server.url}/api/v1/jobs").status_code == 200
        assert httpx.post(f"{server.url}/api/v1/jobs", json=job_dict()).status_code == 401
        assert httpx.post(f"{server.url}/api/v1/jobs", json=job_dict(), headers=auth("guess")).status_code == 401
    finally:
        stop(server)


# -- nothing from a request is unpickled or imported ---------------------------------------------

class Planted:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def torch_save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_planted_pickles_are_refused_and_never_unpickled(srv: Server, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    raw = pickle.dumps({"weight": Planted(marker)})
    zipped = torch_save_bytes({"weight": Planted(marker)})
    assert zipfile.is_zipfile(io.BytesIO(zipped))
    for body, says in ((raw, "a Python pickle"), (zipped, "a zip archive (torch.save format)")):
        r = httpx.post(f"{srv.url}/api/v1/weights", content=body, headers=auth())
        assert r.status_code == 400 and says in r.json()["detail"], r.text
        assert "nothing is unpickled" in r.json()["detail"]
    # a pickle already on the server's disk cannot be named by a job either
    (tmp_path / "evil.pt").write_bytes(zipped)
    r = httpx.post(f"{srv.url}/api/v1/jobs", json=job_dict(model={"weights": str(tmp_path / "evil.pt")}),
                   headers=auth())
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["body", "model", "weights"]
    # and the CLI's loader reads .pt files with weights_only: refused, not executed
    from search_spaces.weights import WeightsError, read_state_dict

    with pytest.raises(WeightsError, match="holds Python objects, refused"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    assert list((srv.root / "artifacts" / "weights").glob("*")) == []  # nothing kept, no temp file left


def test_architectures_come_from_the_catalog_never_from_an_import(srv: Server) -> None:
    for arch in ("evilmod:build", "evilmod", "os:system", "service.cli:main"):
        r = httpx.post(f"{srv.url}/api/v1/jobs", json=job_dict(model={"arch": arch}), headers=auth())
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model", "arch"], (arch, r.text)
    assert not (srv.root / "imported.marker").exists()  # evilmod is importable by the server, yet never imported


# -- uploads -------------------------------------------------------------------------------------

def test_oversized_and_odd_uploads_are_refused(srv: Server, tmp_path: Path) -> None:
    url = f"{srv.url}/api/v1/weights"
    too_big = b"\0" * (MAX_UPLOAD + 1)
    r = httpx.post(url, content=too_big, headers=auth())
    assert r.status_code == 413 and r.json()["detail"] == f"upload exceeds {MAX_UPLOAD} bytes"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for _ in range(MAX_UPLOAD // 4096 + 2):
            yield b"\0" * 4096

    r = httpx.post(url, content=chunks(), headers=auth())
    assert r.status_code == 413, r.text
    save_file({"w": torch.zeros(4)}, str(tmp_path / "ok.safetensors"))
    good = (tmp_path / "ok.safetensors").read_bytes()
    odd = {b"": "empty upload", b"\x00" * 100: "not a safetensors file", good[:-3]: "not a safetensors file",
           (10**12).to_bytes(8, "little") + b"{}": "not a safetensors file",
           b'{"model": "resnet"}': "not a safetensors file"}
    for body, says in odd.items():
        r = httpx.post(url, content=body, headers=auth())
        assert r.status_code == 400 and says in r.json()["detail"], (body[:20], r.text)
    assert list((srv.root / "artifacts" / "weights").glob("*")) == []
    r = httpx.post(url, content=good, headers=auth())
    assert r.status_code == 201 and r.json()["tensors"] == 1


# -- job spec limits -----------------------------------------------------------------------------

def test_spec_body_over_the_limit_is_refused_with_413(srv: Server) -> None:
    big = job_dict(keep_layers=[f"layer{i}" for i in range(2000)])
    body = json.dumps(big).encode()
    assert len(body) > MAX_SPEC
    want = f"request body exceeds {MAX_SPEC} bytes (the server's PRUNESEARCH_MAX_SPEC_BYTES)"
    r = httpx.post(f"{srv.url}/api/v1/jobs", content=body, headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"] == want
    r = httpx.post(f"{srv.url}/api/v1/jobs", content=iter([body[i:i + 1000] for i in range(0, len(body), 1000)]),
                   headers={**auth(), "Content-Type": "application/json"})  # chunked, no Content-Length
    assert r.status_code == 413 and r.json()["detail"] == want
    assert srv.client().jobs()["total"] == 0


def test_every_numeric_field_of_the_spec_has_bounds() -> None:
    unbounded: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("integer", "number"):
                low = "minimum" in node or "exclusiveMinimum" in node
                high = "maximum" in node or "exclusiveMaximum" in node
                if not (low and high):
                    unbounded.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    schema = JobSpec.model_json_schema()
    walk(schema, "#")
    assert unbounded == []
    numbers = json.dumps(schema).count('"type": "integer"') + json.dumps(schema).count('"type": "number"')
    assert numbers > 40  # the walk saw the fields (a schema without them would pass vacuously)


def test_out_of_range_numbers_are_422_naming_the_field(srv: Server) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"seed": -1}, "body.seed"), ({"seed": 2**40}, "body.seed"),
        ({"dataset": {"val_size": 10**12}}, "body.dataset.val_size"),
        ({"device": {"cores": [1, 99999]}}, "body.device.cores.1"),
        ({"strategy": {"name": "amc", "episodes": 10**9}}, "body.strategy.amc.episodes"),
        ({"budget": {"metric": "flops", "target": 1e30, "relative": False}}, "body.budget.target")]
    for override, loc in cases:
        r = httpx.post(f"{srv.url}/api/v1/jobs", json=job_dict(**override), headers=auth())
        assert r.status_code == 422, (override, r.text)
        assert loc in {".".join(str(p) for p in e["loc"]) for e in r.json()["detail"]}, (override, r.text)


def test_active_jobs_per_token_are_limited_with_429(srv: Server) -> None:
    client, other = srv.client(), srv.client(OTHER_TOKEN)
    try:
        for _ in range(MAX_ACTIVE):
            client.submit(job_dict(**SLOW))
        r = httpx.post(f"{srv.url}/api/v1/jobs", json=job_dict(**SLOW), headers=auth())
        assert r.status_code == 429, r.text
        assert r.json()["detail"].startswith(f"token 'ci' already has {MAX_ACTIVE} queued or running jobs; "
                                             f"the limit is {MAX_ACTIVE}")
        assert TOKEN not in r.text
        assert other.submit(job_dict(**SLOW))["status"] == "queued"  # the limit is per token
        cancel_all(srv)
        assert client.submit(job_dict(**SLOW))["status"] == "queued"  # finished jobs free the slots
    finally:
        cancel_all(srv)


# -- artifacts -----------------------------------------------------------------------------------

TRAVERSALS = ["../../jobs.db", "..%2F..%2Fjobs.db", "%2e%2e%2f%2e%2e%2fjobs.db", "%2E%2E/%2E%2E/jobs.db",
              "..%252F..%252Fjobs.db", "....//....//jobs.db", "..%5C..%5Cjobs.db", "%2Fetc%2Fpasswd",
              "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%c0%ae%c0%ae%2fjobs.db", "plan.json%00.txt",
              "..%2Fjobs%2F..%2F..%2Fjobs.db", ".%2F..%2F..%2Fserver.log"]


def test_artifact_names_cannot_traverse(srv: Server) -> None:
    client = srv.client()
    job = client.submit(job_dict())
    assert wait_for(client, job["id"], {"succeeded", "failed"})["status"] == "succeeded"
    secrets_on_disk = [b"SQLite format 3", b"root:", b"api: http://"]
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    for name in TRAVERSALS:
        conn.request("GET", f"/api/v1/jobs/{job['id']}/artifacts/{name}")  # sent byte for byte, not normalised
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status in (404, 400), (name, resp.status)
        assert not any(s in body for s in secrets_on_disk), name
    conn.close()
    assert httpx.get(f"{srv.url}/api/v1/jobs/{job['id']}/artifacts/plan.json").status_code == 200


def test_upload_references_cannot_traverse(srv: Server, tmp_path: Path) -> None:
    save_file({"w": torch.zeros(4)}, str(srv.root / "outside.safetensors"))
    r = httpx.post(f"{srv.url}/api/v1/jobs", json=job_dict(model={"weights": "upload:../../outside"}),
                   headers=auth())
    assert r.status_code in (400, 422), r.text
    assert "does not fit" not in r.text and "cannot read" not in r.text, r.text  # refused without reading the file


def test_optuna_storage_is_not_chosen_by_the_request(srv: Server, tmp_path: Path) -> None:
    spec = job_dict(strategy={"name": "optuna", "trials": 2, "storage": f"sqlite:///{tmp_path / 'chosen.db'}"})
    r = httpx.post(f"{srv.url}/api/v1/jobs", json=spec, headers=auth())
    if r.status_code == 201:
        srv.client().cancel(r.json()["id"])
    assert r.status_code in (400, 422), r.text


def test_the_server_downloads_nothing_a_request_asks_for(srv: Server) -> None:
    r = httpx.post(f"{srv.url}/api/v1/jobs", json=job_dict(dataset={"download": True}), headers=auth())
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "dataset", "download"]


def test_no_token_is_ever_logged(srv: Server) -> None:
    """Runs last in this module: by now every token has been sent in accepted and refused requests and jobs ran."""
    time.sleep(0.5)
    log = (srv.root / "server.log").read_text()
    assert "job.end" in log or "job.failed" in log or "api: http://" in log  # the log is the one the server wrote
    for secret in (TOKEN, OTHER_TOKEN, READ_TOKEN, BOGUS_TOKEN):
        assert secret not in log
