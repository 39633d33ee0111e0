"""OpenAPI examples, taken from a real run of the small test job (trimmed), so /docs shows what
clients will actually receive."""

from __future__ import annotations

from typing import Any

from agents.events import EVENT_KINDS
from search_spaces.kinds import GRANULARITIES

JOB_ID = "4ef3818aa9224cc18f18dc694546161a"
_BASE = f"/api/v1/jobs/{JOB_ID}"

JOB: dict[str, Any] = {
    "id": JOB_ID, "name": "tiny", "status": "running", "created_at": "2026-11-25T16:41:51Z",
    "started_at": "2026-11-25T16:41:52Z", "finished_at": None,
    "progress": {"phase": "search", "done": 4, "planned": 7, "best_val_acc": 0.344, "eta_s": 6.1},
    "result": None, "error": None, "attempts": 1, "cancel_requested": False, "schedule_id": None,
    "links": {"self": _BASE, "events": f"{_BASE}/events", "cancel": f"{_BASE}/cancel", "plan": f"{_BASE}/plan",
              "history": f"{_BASE}/history", "artifacts": f"{_BASE}/artifacts"},
    "spec": {"name": "tiny", "model": {"arch": "small_cnn"}, "strategy": {"name": "uniform", "steps": 6},
             "budget": {"metric": "flops", "target": 0.5}},
}

ARTIFACT: dict[str, Any] = {"name": "plan.json", "content_type": "application/json", "size": 1712,
                            "sha256": "9c1d0f0e5a4b7d3c2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d",
                            "url": f"{_BASE}/artifacts/plan.json"}

PLAN: dict[str, Any] = {
    "schema_version": 3, "fingerprint": "bbc9e461776c21d8",
    "model": {"arch": "small_cnn", "num_classes": 10, "in_channels": 1, "input_size": 8},
    "criterion": "l1", "round_to": 1, "flops_before": 918154, "flops_after": 441154,
    "params_before": 28842, "params_after": 13892,
    "groups": [{"name": "conv2.0", "granularity": "channel", "members": ["conv2.0", "stem.0"],
                "ratio": 0.306, "units": 32, "kept": 22, "effective_ratio": 0.3125}],
    "layers": [{"name": "stem.0", "kind": "conv", "in_before": 1, "in_after": 1, "out_before": 32, "out_after": 22,
                "params_before": 288, "params_after": 198, "sparsity": 0.3125}],
}

HISTORY_ROW: dict[str, Any] = {
    "id": 7, "ratios": {"conv2.0": 0.292, "conv3.0": 0.292}, "tag": {"knob": 0.292}, "accuracy": True,
    "latency": "measured", "short_steps": None, "flops": 477692, "params": 14925, "val_acc": 0.344,
    "latency_ratio": 0.81, "latency_ci": [0.79, 0.83], "latency_source": "measured", "meets_budget": True,
    "seconds": 0.368,
}

EVENTS = ('id: 12\nevent: phase\ndata: {"type": "phase", "phase": "search", "state": "start"}\n\n'
          'id: 13\nevent: evaluation\ndata: {"type": "evaluation", "done": 1, "planned": 7, "val_acc": 0.58, '
          '"meets_budget": false, "best_val_acc": null}\n\n'
          'event: end\ndata: {"status": "succeeded"}\n\n')

_UPLOAD = "0b5c3f1e9d8a4c7b8e2f6a1d3c5b7e9f"
WEIGHTS: dict[str, Any] = {"id": _UPLOAD, "reference": f"upload:{_UPLOAD}", "size": 1098368, "tensors": 122}


def json_example(value: Any, description: str) -> dict[int | str, dict[str, Any]]:
    """A `responses` entry for a 200 whose body is plain JSON."""
    return {200: {"description": description, "content": {"application/json": {"example": value}}}}

SCHEDULE_ID = "5d2e8c1f4b7a4e0c9a3f6b8d1e2c4a7f"
SCHEDULE: dict[str, Any] = {
    "id": SCHEDULE_ID, "name": "nightly-resnet20", "cron": "0 2 * * 1-5", "timezone": "Europe/Berlin",
    "paused": False, "weights": {"path": "/var/lib/prunesearch/checkpoints/resnet20"},
    "job": {"name": "nightly", "model": {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "input_size": 28},
            "dataset": {"name": "fashion-mnist"}, "budget": {"metric": "latency_ms", "target": 0.5},
            "strategy": {"name": "optuna", "trials": 60}},
    "missed": "run_once", "grace_s": 3600.0, "skip_unchanged": True, "warm_start": True,
    "thresholds": {"accuracy_drop": 0.01, "latency_rise": 0.05, "budget_miss": True}, "webhook_url": None,
    "next_run_at": "2026-11-26T01:00:00Z", "last_run_at": "2026-11-25T01:00:00Z",
    "created_at": "2026-11-20T09:12:00Z", "updated_at": "2026-11-20T09:12:00Z", "owner": "ci",
    "links": {"self": f"/api/v1/schedules/{SCHEDULE_ID}", "runs": f"/api/v1/schedules/{SCHEDULE_ID}/runs",
              "run": f"/api/v1/schedules/{SCHEDULE_ID}/run"},
}

RUN: dict[str, Any] = {
    "id": "a1b2c3d4e5f60718293a4b5c6d7e8f90", "schedule_id": SCHEDULE_ID, "job_id": JOB_ID, "status": "succeeded",
    "reason": None, "trigger": "cron", "fired_at": "2026-11-25T01:00:00Z",
    "weights_sha256": "3f5a9c0d1e2b4a6c8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
    "weights_ref": "upload:3f5a9c0d1e2b4a6c8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
    "comparison": {"previous_run": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "base_test_acc": [0.9357, 0.9361],
                   "pruned_test_acc": [0.9012, 0.8874], "latency_ratio": [0.49, 0.50]},
    "regression": True, "flags": ["pruned_accuracy_drop"], "webhook": {"status": 200},
}

NODE: dict[str, Any] = {"node_id": "7c0d9e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091", "ip": "10.0.0.12",
                        "hostname": "jetson-1", "cpu_model": "ARMv8 Processor rev 1 (v8l)", "cores": 6, "cpus": 6.0,
                        "gpus": [{"name": "cuda:0", "model": "Orin", "memory_gib": 30.6}],
                        "runtimes": ["eager", "torchscript", "onnxruntime", "cuda"],
                        "resources": {"prunesearch_latency": 1.0, "jetson": 1.0}}

DEVICES: dict[str, Any] = {"source": "ray", "ray_address": "10.0.0.2:6380", "nodes": [NODE]}

CATALOG: dict[str, Any] = {
    "models": ["mobilenetv2", "resnet20", "resnet32", "resnet56", "small_cnn", "vgg11_bn", "vgg16_bn"],
    "datasets": ["cifar10", "digits", "fashion-mnist", "synthetic"],
    "strategies": {"uniform": {"steps": {"type": "integer", "default": 12, "minimum": 1, "maximum": 60}}},
    "criteria": ["l1", "l2", "bn_scale", "fpgm", "lamp", "random", "taylor", "hessian", "activation"],
    "runtimes": ["eager", "torchscript", "onnxruntime"], "budget_metrics": ["latency_ms", "flops", "params"],
    "events": {kind: EVENT_KINDS[kind] for kind in ("phase", "trial")},
    "granularities": {g: GRANULARITIES[g].describe() for g in ("channel", "head")},
    "devices": [{"name": "cpu", "model": "AMD EPYC 7B13", "cores": 2, "runtimes": ["eager", "torchscript",
                                                                                   "onnxruntime"],
                 "node": "127.0.0.1", "node_id": "local", "hostname": "build-1", "resources": []}],
}

SPACE: dict[str, Any] = {  # GET /catalog/space?arch=resnet20&in_channels=1&input_size=28 (abridged: 3 of 12)
    "arch": "resnet20", "macs": 31332426, "params": 272186,
    "dimensions": [
        {"name": "conv1", "granularity": "channel", "units": 16, "min_kept": 2,
         "members": ["conv1", "layer1.2.conv2", "layer1.1.conv2", "layer1.0.conv2"]},
        {"name": "layer1.0.conv1", "granularity": "channel", "units": 16, "min_kept": 2, "members": ["layer1.0.conv1"]},
        {"name": "layer1.1.conv1", "granularity": "channel", "units": 16, "min_kept": 2, "members": ["layer1.1.conv1"]},
    ],
    "excluded": {},
}

HEALTH: dict[str, Any] = {"database": True, "ray": "embedded"}

METRICS = ('# HELP prunesearch_jobs jobs by status\n# TYPE prunesearch_jobs gauge\n'
           'prunesearch_jobs{status="running"} 1.0\nprunesearch_queue_length 3.0\n'
           'prunesearch_evaluations_per_second 0.35\n'
           'prunesearch_job_duration_seconds_bucket{le="300.0"} 4.0\n')
