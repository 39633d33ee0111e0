"""What each node can time: CPU model, usable cores, GPUs, runtimes, plus its Ray id, IP and resources.

A job's `device` is matched against this at submission, so a job asking for hardware no node has
fails with a 400 instead of waiting forever for an actor Ray cannot place. On a cluster the facts
come from one tiny Ray task per alive node (hard node affinity, zero CPUs, so it runs even on a
busy node); with no Ray address configured the server describes its own machine with the same
`node_facts()` body and never starts Ray just to answer. Cluster answers are cached for `TTL_S`.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import threading
import time
from typing import Any

from service.config import Settings
from service.spec import DeviceSpec

TTL_S = 30.0
_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
_lock = threading.Lock()
# Ray's own resources: everything else on a node is an operator-declared custom resource
_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory", "accelerator_type:")


def node_facts() -> dict[str, Any]:
    """This process's machine: the part of the inventory a node reports about itself."""
    import torch

    from measurement.latency import cpu_model

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": f"cuda:{i}", "model": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    runtimes = ["eager"]
    if hasattr(torch, "jit"):
        runtimes.append("torchscript")
    if importlib.util.find_spec("onnxruntime") is not None:
        runtimes.append("onnxruntime")
    if gpus:
        runtimes.append("cuda")
    return {"hostname": platform.node(), "cpu_model": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "gpus": gpus, "runtimes": runtimes}


def local_inventory() -> list[dict[str, Any]]:
    """The embedded default: this machine only, no Ray."""
    return [{"node_id": None, "ip": "127.0.0.1", "resources": {}, "source": "local", **node_facts()}]


def _custom(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items()
            if not k.startswith("node:") and not any(k == b or k.startswith(b) for b in _BUILTIN)}


def cluster_inventory(timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Ask every alive node of the connected cluster to describe itself (Ray must be initialised)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote_probe = ray.remote(num_cpus=0, max_retries=1)(node_facts)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [remote_probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote() for n in nodes]
    facts = ray.get(refs, timeout=timeout_s)
    return [{"node_id": n["NodeID"], "ip": n["NodeManagerAddress"], "resources": _custom(n.get("Resources", {})),
             "cpus": n.get("Resources", {}).get("CPU", 0.0), "source": "ray", **f}
            for n, f in zip(nodes, facts, strict=True)]


def inventory(settings: Settings, fresh: bool = False) -> list[dict[str, Any]]:
    """The inventory the server matches jobs against: the configured cluster, or this machine.

    Raises RayUnavailableError when an address is configured and Ray cannot be reached."""
    if not settings.ray_address:
        return local_inventory()
    from service.execution.ray_cluster import connect

    with _lock:
        hit = _cache.get(settings.ray_address)
        if hit and not fresh and time.monotonic() - hit[0] < TTL_S:
            return hit[1]
        connect(settings.ray_address)
        nodes = cluster_inventory()
        _cache[settings.ray_address] = (time.monotonic(), nodes)
        return nodes


def node_matches(node: dict[str, Any], ref: str) -> bool:
    """`device.node` names a node by its Ray node id, its IP, its hostname or a custom resource it holds."""
    return ref in (node.get("node_id"), node.get("ip"), node.get("hostname")) or ref in node.get("resources", {})


def has_device(node: dict[str, Any], device: DeviceSpec) -> bool:
    if device.is_cuda:
        index = int(device.name.split(":", 1)[1]) if ":" in device.name else 0
        return len(node.get("gpus", [])) > index
    return True


def match_device(nodes: list[dict[str, Any]], device: DeviceSpec) -> tuple[list[dict[str, Any]], str | None, str]:
    """Nodes that can time `device`, or (no nodes, the offending field, why)."""
    candidates = nodes
    if device.node is not None:
        candidates = [n for n in nodes if node_matches(n, device.node)]
        if not candidates:
            known = sorted({str(n.get("ip")) for n in nodes} | {r for n in nodes for r in n.get("resources", {})})
            return [], "node", f"no node matches {device.node!r}; known node IPs and resources: {known}"
    with_device = [n for n in candidates if has_device(n, device)]
    if not with_device:
        why = f"node {device.node!r} has no {device.name}" if device.node else f"no node has {device.name}"
        return [], "name", why
    with_runtime = [n for n in with_device if device.runtime in n.get("runtimes", [])]
    if not with_runtime:
        return [], "runtime", f"no node with {device.name} can run {device.runtime}"
    return with_runtime, None, ""
