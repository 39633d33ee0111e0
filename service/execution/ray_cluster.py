"""Joining a Ray cluster: the connection helpers the server, the inventory and the Ray backend share.

Kept apart from the backend so that `service.inventory` (what each node can time) and the backend
(which places its latency actor by that inventory) both depend on this module and not on each other.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import ray

from service.config import RayUnavailableError

LATENCY_RESOURCE = "prunesearch_latency"  # one per node: a CPU timing holds it, so timings never overlap


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on a dead host:port; `ray.init` would otherwise retry for minutes."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and friends: Ray resolves these itself and fails quickly
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailableError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from exc


def connect(address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Join the cluster at `address` ("auto", "host:port", "ray://…"), or start an embedded one."""
    if not ray.is_initialized():
        if address:
            check_reachable(address)
        try:
            if address:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                cpus = num_cpus or os.cpu_count() or 1
                ray.init(address="local", num_cpus=cpus, resources={LATENCY_RESOURCE: 1}, include_dashboard=False,
                         log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailableError(f"cannot reach Ray at {address or 'local'}: {exc}") from exc
    return ray.cluster_resources()
