"""Does the Ray backend scale, and does latency stay exclusive while accuracy workers are busy?

1. Scaling: the same accuracy-heavy batch (fixed number of candidates, BN recalibration + short
   fine-tune + validation each) in-process, on an embedded Ray cluster with 1 and 2 accuracy
   workers, and on a two-"node" loopback cluster (`ray start` head + worker, 1 CPU each): wall time,
   evaluations per second, scaling efficiency (evals/s over k x the 1-worker evals/s).
2. Exclusivity: the latency ratio of one fixed plan (candidate vs base, interleaved) timed
   - idle: nothing else of the job runs;
   - busy, gated: in batches with accuracy candidates, through `RayEvaluator` (the product path);
   - busy, ungated: the latency actor timing while the accuracy actor scores on the other core
     (the old behaviour, kept here only as the contrast the gate exists for).
   Gated and idle must agree within their confidence intervals; the span check counts accuracy
   work that overlapped a timing on the timed node (must be 0 when gated).

Small proof run (about 3 min on 2 cores): `python bench/scaling.py --small`
Real run (idle machine, about 12-15 min on 2 cores): `python bench/scaling.py`
Results: bench/results/scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402

from agents.base import Candidate  # noqa: E402
from agents.budget import Budget  # noqa: E402
from bench.results_io import environment, machine, markdown_table, write  # noqa: E402
from measurement.latency import MeterSettings, RatioStats  # noqa: E402
from search_spaces.datasets import DataSplits, load_dataset  # noqa: E402
from search_spaces.plan import ModelIdentity  # noqa: E402
from search_spaces.space import PruningSpace  # noqa: E402
from search_spaces.zoo import build_model  # noqa: E402
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator  # noqa: E402
from service.execution.ray_backend import RayEvaluator, Span  # noqa: E402
from service.execution.ray_cluster import LATENCY_RESOURCE, connect  # noqa: E402
from tests.live_server import free_port  # noqa: E402


@dataclass
class LoopbackCluster:
    """A real multi-node Ray cluster on this machine: `ray start --head` plus `ray start --address` workers.

    Each node is a `ray start --block` process in its own session (SIGTERM takes its raylet and workers
    down with it; SIGKILL to the group simulates losing the node);
    the session lives in a private temp dir, so `stop()` can also kill any straggler of *this* cluster
    by its pid (matched on that dir) without touching other Ray instances on the machine."""

    nodes: Sequence[dict[str, float]]  # custom resources per node; node 0 is the head
    cpus: int = 1
    dashboard: bool = False  # the state API (list_tasks/list_actors) needs it
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    temp_dir: str = ""
    port: int = 0
    auth_mode: str = field(default_factory=lambda: os.environ.get("RAY_AUTH_MODE", "disabled"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        """What a driver needs in its environment to join this cluster.

        Ray 2.60 turns token auth on for a new head by default, but a client only when it finds a token, and a
        process caches its mode once it has used Ray. So the cluster takes the mode this process already has
        (token, with ~/.ray/auth_token, after an embedded `ray.init`; else disabled), set on both sides."""
        return {"RAY_AUTH_MODE": self.auth_mode, "RAY_USAGE_STATS_ENABLED": "0"}

    def _ray(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.client_env, "PYTHONPATH": str(ROOT)}
        log = open(Path(self.temp_dir) / f"node{len(self.procs)}.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block", *args,
                                 "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
                                 "--dashboard-agent-listen-port", "0", "--disable-usage-stats"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 120.0) -> LoopbackCluster:
        import json

        self.temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths are length-limited
        self.port = free_port()
        dash = ["--include-dashboard", "true", "--dashboard-port", str(free_port())] if self.dashboard else \
            ["--include-dashboard", "false"]
        try:
            self.procs.append(self._ray("--head", "--port", str(self.port), "--temp-dir", self.temp_dir,
                                        "--ray-client-server-port", str(free_port()), *dash,
                                        "--resources", json.dumps(dict(self.nodes[0]))))
            self._wait_port(timeout)
            for res in self.nodes[1:]:
                self.procs.append(self._ray("--address", self.address, "--resources", json.dumps(dict(res))))
            self._wait_nodes(len(self.nodes), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"ray head exited: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"ray head not up in {timeout}s: {self.log_tail()}")

    def _wait_nodes(self, n: int, timeout: float) -> None:
        """Poll the GCS from a throwaway process, so this process stays free to `ray.init` later."""
        probe = ("import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False);"
                 "print(sum(1 for x in ray.nodes() if x['Alive']))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", probe, self.address], capture_output=True, text=True,
                                 env={**os.environ, **self.client_env}, check=False)
            if out.stdout.strip().isdigit() and int(out.stdout.strip()) >= n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{n} ray nodes not up in {timeout}s: {self.log_tail()}")

    def kill_node(self, i: int) -> None:
        """Lose node i (not the head) abruptly: SIGKILL to its process group (`ray start`, raylet, workers)."""
        with suppress(ProcessLookupError):
            os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait(30)

    def log_tail(self) -> str:
        return "".join(p.read_text()[-1500:] for p in sorted(Path(self.temp_dir).glob("node*.log")))

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, then the head
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only this node's processes
                    proc.wait()
        for pid in self.stragglers():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def stragglers(self) -> list[int]:
        """Processes of this cluster still alive (their command line names our private session dir)."""
        if not self.temp_dir:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if self.temp_dir.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


# ---- workload ---------------------------------------------------------------------------------------------------


def workload(input_size: int, train: int, val: int) -> tuple[PruningSpace, DataSplits]:
    from types import SimpleNamespace

    ident = ModelIdentity(arch="resnet20", num_classes=10, in_channels=1, input_size=input_size)
    spec = SimpleNamespace(name="synthetic", root=None, download=False, val_size=val, train_size=train,
                           test_size=64, seed=0)
    data = load_dataset(spec, input_size=input_size, in_channels=1, num_classes=10)
    import torch

    torch.manual_seed(0)
    return PruningSpace(build_model(ident).eval(), ident), data


def candidates(space: PruningSpace, n: int, start: int = 0) -> list[Candidate]:
    return [Candidate(start + i, space.uniform(0.1 + 0.7 * i / max(n - 1, 1)), latency="none") for i in range(n)]


def timed_scaling(space: PruningSpace, data: DataSplits, recipe: AccuracyRecipe, n: int, workers: int | None,
                  label: str) -> dict[str, Any]:
    budget = Budget("flops", 0.5 * space.flops, float(space.flops))
    cands = candidates(space, n)
    t0 = time.perf_counter()
    if workers is None:  # one core, like one Ray accuracy worker (each pins itself and uses one torch thread)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        start = time.perf_counter()
        try:
            results = LocalEvaluator(space, data, budget, recipe, None)(cands)
        finally:
            torch.set_num_threads(threads)
    else:
        ev = RayEvaluator(space, data, budget, recipe, None, accuracy_workers=workers)
        try:
            ray.get([w.where.remote() for w in ev.workers])  # actors placed, model and data loaded
            start = time.perf_counter()
            results = ev(cands)
        finally:
            ev.shutdown()
    wall = time.perf_counter() - start
    assert len({r.candidate.id for r in results}) == n
    return {"setup": label, "workers": workers or 1, "evaluations": n, "startup_s": start - t0, "wall_s": wall,
            "evals_per_s": n / wall}


def overlaps(acc: Sequence[Span], timings: Sequence[Span]) -> int:
    """Accuracy spans that overlapped a timing on the same node."""
    return sum(1 for a0, a1, an in acc for t0, t1, tn in timings if an == tn and a0 < t1 and t0 < a1)


Ratio = tuple[float, float, float]  # ratio, CI low, CI high


def ratio_row(mode: str, stats: Sequence[Ratio], overlap: int | None) -> dict[str, Any]:
    return {"mode": mode, "timings": len(stats), "ratio_median": statistics.median(s[0] for s in stats),
            "ci_low": statistics.median(s[1] for s in stats), "ci_high": statistics.median(s[2] for s in stats),
            "ratio_min": min(s[0] for s in stats), "ratio_max": max(s[0] for s in stats),
            "overlapping_accuracy_calls": overlap}


def measured(ev: RayEvaluator, batch: list[Candidate]) -> Ratio:
    """Evaluate a batch whose first candidate is the timed plan; its measured ratio and CI."""
    res = ev(batch)[0]
    assert res.latency_ratio is not None and res.latency_ci is not None
    return res.latency_ratio, *res.latency_ci


def exclusivity(space: PruningSpace, data: DataSplits, recipe: AccuracyRecipe, repeats: int, busy_cands: int,
                settings: MeterSettings) -> list[dict[str, Any]]:
    budget = Budget("latency_ms", 0.5, 1.0)
    plan = dict(space.uniform(0.5))
    ev = RayEvaluator(space, data, budget, recipe, settings)
    try:
        idle = [measured(ev, [Candidate(10_000 + r, plan, accuracy=False)]) for r in range(repeats)]
        idle_spans = ray.get(ev.latency.spans.remote())
        gated = [measured(ev, [Candidate(20_000 + r, plan, accuracy=False),
                               *candidates(space, busy_cands, start=30_000 + r * busy_cands)])
                 for r in range(repeats)]
        timing_spans = ray.get(ev.latency.spans.remote())[len(idle_spans):]
        acc_spans = [s for w in ev.workers for s in ray.get(w.spans.remote())]
        gated_overlap = overlaps(acc_spans, timing_spans)
        # the contrast: time while the accuracy actors score (no gate), as before the fix
        ungated: list[Ratio] = []
        for r in range(repeats):
            work = [w.score.remote(c, None) for w, c in zip(
                ev.workers * busy_cands, candidates(space, busy_cands * len(ev.workers), start=40_000 + r * 100),
                strict=False)]
            time.sleep(0.3)  # let the accuracy calls start first
            stats: RatioStats = ray.get(ev.latency.ratio.remote(plan))
            ungated.append((stats.ratio, stats.ci_low, stats.ci_high))
            ray.get(work)
        all_timing = ray.get(ev.latency.spans.remote())[len(idle_spans) + repeats:]
        acc_all = [s for w in ev.workers for s in ray.get(w.spans.remote())]
        ungated_overlap = overlaps(acc_all, all_timing)
    finally:
        ev.shutdown()
    return [ratio_row("idle", idle, None), ratio_row("busy, gated (RayEvaluator)", gated, gated_overlap),
            ratio_row("busy, ungated (old behaviour)", ungated, ungated_overlap)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a quick proof run, not numbers to publish")
    parser.add_argument("--evaluations", type=int, default=None)
    args = parser.parse_args()
    small = args.small
    n = args.evaluations or (6 if small else 24)
    space, data = workload(16 if small else 28, 512 if small else 2048, 128 if small else 1000)
    recipe = AccuracyRecipe(recalibration_batches=4 if small else 10, short_steps=5 if small else 20,
                            batch_size=128, finetune_batch_size=64)
    meter = MeterSettings(batch_size=8 if small else 32, warmup=3, repeats=15, ci_halfwidth=0.01,
                          max_seconds=3 if small else 10)
    repeats = 2 if small else 5
    env = environment()
    print(f"scaling: {n} evaluations, {'small' if small else 'full'} configuration", flush=True)

    rows = [timed_scaling(space, data, recipe, n, None, "in-process")]
    print(rows[-1], flush=True)
    connect(num_cpus=2)
    try:
        for k in (1, 2):
            rows.append(timed_scaling(space, data, recipe, n, k, f"embedded Ray, {k} worker(s)"))
            print(rows[-1], flush=True)
        latency = exclusivity(space, data, recipe, repeats, 2 if small else 4, meter)
        for row in latency:
            print(row, flush=True)
    finally:
        ray.shutdown()
    cluster = LoopbackCluster([{"node_a": 1, LATENCY_RESOURCE: 1}, {"node_b": 1, LATENCY_RESOURCE: 1}]).start()
    try:
        os.environ.update(cluster.client_env)
        connect(cluster.address)
        rows.append(timed_scaling(space, data, recipe, n, 2, "loopback cluster, 2 nodes x 1 CPU"))
        print(rows[-1], flush=True)
    finally:
        ray.shutdown()
        cluster.stop()
    one = next(r for r in rows if r["setup"].startswith("embedded") and r["workers"] == 1)["evals_per_s"]
    for r in rows:
        r["efficiency"] = r["evals_per_s"] / (r["workers"] * one)
    idle, gated = latency[0], latency[1]
    agree = gated["ci_low"] <= idle["ratio_median"] <= gated["ci_high"] or \
        idle["ci_low"] <= gated["ratio_median"] <= idle["ci_high"]
    data_out = {"environment": env, "configuration": "small" if small else "full", "evaluations": n,
                "recipe": vars(recipe) if hasattr(recipe, "__dict__") else str(recipe),
                "meter": vars(meter) if hasattr(meter, "__dict__") else str(meter),
                "scaling": rows, "latency": latency, "gated_agrees_with_idle": agree}
    md = [f"# Ray scaling and latency exclusivity ({data_out['configuration']} configuration)", "",
          f"{machine(env)}. ResNet-20, "
          f"{n} accuracy-heavy evaluations (BN recalibration {recipe.recalibration_batches} batches, "
          f"{recipe.short_steps} fine-tune steps, validation).", "",
          markdown_table(rows, ["setup", "workers", "evaluations", "startup_s", "wall_s", "evals_per_s", "efficiency"],
                         {"startup_s": ".1f", "wall_s": ".1f", "evals_per_s": ".3f", "efficiency": ".2f"}), "",
          "startup_s: actor start-up and one object-store read of model and data, outside wall_s. "
          "efficiency: evals/s over (workers x embedded 1-worker evals/s).", "",
          "Latency ratio of one plan (uniform 0.5) vs the base, timed idle and while accuracy workers are busy "
          "(median over timings; CI = median of the per-timing 95% CIs):", "",
          markdown_table(latency, ["mode", "timings", "ratio_median", "ci_low", "ci_high", "ratio_min", "ratio_max",
                                   "overlapping_accuracy_calls"]), "",
          f"Gated agrees with idle within the CI: **{agree}**."]
    write("scaling", data_out, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
