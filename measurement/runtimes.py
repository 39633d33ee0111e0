"""Turn a model into a zero-argument inference call for one runtime, and time such calls.

Every runtime gets the same input (batch x C x H x W), the thread count set explicitly, and a
timer that fits the device: `perf_counter_ns` on CPU, CUDA events plus synchronize on GPU.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from contextlib import suppress

import torch
from torch import nn

InferenceCall = Callable[[], object]


class RuntimeUnavailableError(RuntimeError):
    """The runtime cannot run this model here (no CUDA, export failed, ...)."""


def set_threads(threads: int) -> None:
    """Intra-op threads as asked, inter-op 1; the latter can only be set before first use."""
    torch.set_num_threads(threads)
    with suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def on_device(model: nn.Module, device: str) -> nn.Module:
    """A copy of `model` on `device`. `Module.to` moves in place, and the caller's model (a search
    space's base, say) must stay where its pruning and accuracy scoring run."""
    return copy.deepcopy(model).to(device)


def prepare(model: nn.Module, example: torch.Tensor, runtime: str, device: str, threads: int) -> InferenceCall:
    model = model.eval()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeUnavailableError(f"device.name: {device} requested but CUDA is not available here")
        if runtime == "onnxruntime":
            raise RuntimeUnavailableError("device.runtime: onnxruntime is timed on CPU only")
        model, example = on_device(model, device), example.to(device)
    if runtime == "eager":
        def eager() -> object:
            with torch.inference_mode():
                return model(example)
        return eager
    if runtime == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.freeze(torch.jit.trace(model, example))

        def script() -> object:
            with torch.inference_mode():
                return scripted(example)
        return script
    if runtime == "onnxruntime":
        return _onnxruntime_call(model, example, threads)
    raise RuntimeUnavailableError(f"device.runtime: unknown runtime {runtime!r}")


def _onnxruntime_call(model: nn.Module, example: torch.Tensor, threads: int) -> InferenceCall:
    import onnxruntime as ort

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=17,  # type: ignore[arg-type]
                              input_names=["input"], output_names=["logits"])
    except Exception as exc:  # any exporter failure means this runtime cannot time the model
        raise RuntimeUnavailableError(f"ONNX export failed: {exc}") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"input": example.numpy()}

    def run() -> object:
        return session.run(None, feed)
    return run


def timer_for(device: str) -> Callable[[InferenceCall], float]:
    """A function that runs one call and returns its duration in milliseconds."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_time(call: InferenceCall) -> float:
            torch.cuda.synchronize()
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        return cuda_time

    import time

    def cpu_time(call: InferenceCall) -> float:
        t0 = time.perf_counter_ns()
        call()
        return (time.perf_counter_ns() - t0) / 1e6
    return cpu_time
