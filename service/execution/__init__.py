"""Where a job's work runs: this process or a Ray cluster, behind one interface (`base.Execution`)."""

from __future__ import annotations

from measurement.latency import LatencyMeter
from service.config import Settings
from service.execution.base import EvaluationCancelled, Execution, StopFn
from service.spec import JobSpec

__all__ = ["EvaluationCancelled", "Execution", "open_execution"]


def open_execution(spec: JobSpec, settings: Settings, meter: LatencyMeter, should_stop: StopFn | None = None
                   ) -> Execution:
    """The backend the job's `execution.backend` names; Ray is imported only for Ray jobs."""
    if spec.execution.backend == "ray":
        from service.execution.ray_backend import RayExecution

        return RayExecution(meter, should_stop, settings.ray_address, spec.device.node,
                            spec.execution.accuracy_workers)
    from service.execution.local import LocalExecution

    return LocalExecution(meter, should_stop)
