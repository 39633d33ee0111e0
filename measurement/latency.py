"""The latency meter: warm-up, repeated timing, median and spread, and A/B ratios with a confidence interval.

This machine class (shared VMs) drifts by 10-20% between repeats of the same measurement, so a
candidate is never timed alone against a number taken earlier: it is interleaved with the base
model (A B B A ...), each pair gives one ratio, and rounds continue until the confidence interval
of the median ratio is as narrow as asked or the time cap is hit (reported, never hidden).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from scipy.stats import binom
from torch import nn

from measurement.runtimes import InferenceCall, prepare, set_threads, timer_for


@dataclass(frozen=True)
class MeterSettings:
    device: str = "cpu"
    threads: int = 1
    batch_size: int = 32
    runtime: str = "eager"
    warmup: int = 5
    repeats: int = 15
    ci_halfwidth: float = 0.02
    confidence: float = 0.95
    max_seconds: float = 20.0
    pin_cores: bool = True
    cores: tuple[int, ...] | None = None

    def device_identity(self) -> dict[str, object]:
        """What a timing depends on besides the model: the key of every cached timing (lookup tables,
        baselines), so that no cache is reused on other kernels, threads or inputs."""
        desc = self.describe()
        return {k: desc[k] for k in ("device", "threads", "batch_size", "runtime", "cpu", "cpu_isa", "torch", "cores")}

    def describe(self) -> dict[str, object]:
        """The settings plus what they ran on, so a number always carries its context."""
        out = asdict(self)
        out["cores"] = list(self.pinned_cores()) if self.pin_cores and not self.is_cuda else None
        out["cpu"] = cpu_model()
        out["cpu_isa"] = cpu_isa()
        out["torch"] = torch.__version__
        out["steady_allocator"] = steady_allocator()
        if self.is_cuda and torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        return out

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def pinned_cores(self) -> tuple[int, ...]:
        """Cores to time on: the configured ones, else the last `threads` cores this process may use
        (core 0 tends to take the machine's interrupts)."""
        if self.cores:
            return tuple(self.cores)
        allowed = sorted(os.sched_getaffinity(0))
        return tuple(allowed[-self.threads:])


@dataclass
class LatencyStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # standard deviation / mean of the samples
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencyStats:
        s = sorted(samples)
        mean = statistics.fmean(s)
        sd = statistics.stdev(s) if len(s) > 1 else 0.0
        return cls(median_ms=statistics.median(s), p10_ms=_quantile(s, 0.1), p90_ms=_quantile(s, 0.9),
                   mean_ms=mean, cv=sd / mean if mean else 0.0, n=len(s))


@dataclass
class RatioStats:
    """Candidate/base latency ratio from interleaved pairs, with a distribution-free CI of its median."""

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    pairs: int
    converged: bool  # False when the time cap stopped the meter before the CI was narrow enough
    seconds: float
    candidate: LatencyStats
    base: LatencyStats
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def halfwidth(self) -> float:
        return (self.ci_high - self.ci_low) / 2 / self.ratio if self.ratio else math.inf


def _quantile(sorted_samples: Sequence[float], q: float) -> float:
    if len(sorted_samples) == 1:
        return sorted_samples[0]
    pos = q * (len(sorted_samples) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def median_ci(samples: Sequence[float], confidence: float) -> tuple[float, float]:
    """Order-statistic confidence interval of the median (no normality assumption)."""
    s = sorted(samples)
    n = len(s)
    if n < 6:
        return s[0], s[-1]
    k = int(binom.ppf((1 - confidence) / 2, n, 0.5))  # P(Bin(n, .5) <= k) ~ alpha/2
    k = max(k, 1)
    return s[k - 1], s[n - k]


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 - tiny read
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector instruction set torch's CPU kernels dispatch to (e.g. AVX2, AVX512). Two VMs that both
    call themselves "AMD EPYC" timed the same ResNet-20 plan at batch 1 at 0.54x and 0.605x of the base, so
    the model name alone does not identify a machine; the first's instruction set was not recorded."""
    return str(torch.backends.cpu.get_cpu_capability())


@contextmanager
def timing_threads(threads: int) -> Iterator[None]:
    """Torch intra-op threads as the measurement asks, restored afterwards for the rest of the job."""
    saved = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def pinned(cores: Sequence[int] | None, only_caller: bool = False) -> Iterator[None]:
    """Pin threads to `cores` while timing, then restore the old affinity.

    Default: every thread of this process (an intra-op pool must follow the timing). `only_caller`
    (single-threaded timing): the calling thread alone gets `cores`, and every other thread of the
    process is moved off them. A process that also hosts Ray (driver or worker) has dozens of
    threads of its own; pinned onto the timed core they steal its time slices, and they did: the same
    ResNet-20 plan measured 0.46x of its base alone, 0.50x in a Ray actor and 0.55x in a job's driver.
    """
    if not cores or not hasattr(os, "sched_setaffinity"):
        yield
        return
    timed = set(cores)
    elsewhere = (os.sched_getaffinity(0) - timed) if only_caller else timed
    me = threading.get_native_id()
    saved = {}
    for tid in [int(t) for t in os.listdir("/proc/self/task")]:
        try:
            saved[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, timed if tid == me or not elsewhere else elsewhere)
        except OSError:
            continue  # thread ended meanwhile
    try:
        yield
    finally:
        for tid, mask in saved.items():
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                continue


# glibc malloc tunables (malloc.h): M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_STEADY_BYTES = 1 << 30


@functools.cache
def steady_allocator() -> bool:
    """Fix glibc malloc's mmap and trim thresholds for this process (once; True if applied).

    By default glibc serves large blocks (activations) with fresh mmap pages and adapts its thresholds
    to what the process freed before, so the same model's latency depended on the process's history:
    ResNet-20 at batch 32 ran 27 ms in a fresh process and 19.5 ms after any larger workload, and a
    plan's latency ratio moved from 0.43 to 0.52 with it. Fixed thresholds give every timing process
    the steady state of a long-running server (memory is reused, not returned to the OS).
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): its allocator has no such tunables
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _STEADY_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                          _STEADY_BYTES))


class LatencyMeter:
    """Times models on one device/runtime with fixed settings."""

    def __init__(self, settings: MeterSettings, timer: Callable[[InferenceCall], float] | None = None) -> None:
        """`timer` runs one call and returns milliseconds; by default the device's clock."""
        self.settings = settings
        self._timer = timer or timer_for(settings.device)
        self.steady_allocator = steady_allocator()

    def example(self, in_channels: int, input_size: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(self.settings.batch_size, in_channels, input_size, input_size, generator=g)

    def prepare(self, model: nn.Module, example: torch.Tensor) -> InferenceCall:
        return prepare(model, example, self.settings.runtime, self.settings.device, self.settings.threads)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        s = self.settings
        with timing_threads(s.threads), pinned(s.pinned_cores() if s.pin_cores and not s.is_cuda else None,
                                               only_caller=s.threads == 1):
            yield

    def measure(self, model: nn.Module, example: torch.Tensor, repeats: int | None = None) -> LatencyStats:
        """Absolute latency of one model: warm-up, then `repeats` timed runs (no stopping rule)."""
        call = self.prepare(model, example)
        return self.measure_call(call, repeats or self.settings.repeats)

    def measure_call(self, call: InferenceCall, repeats: int) -> LatencyStats:
        with self._exclusive():
            for _ in range(self.settings.warmup):
                call()
            return LatencyStats.of([self._timer(call) for _ in range(repeats)])

    def compare(self, candidate: nn.Module, base: nn.Module, example: torch.Tensor,
                max_seconds: float | None = None) -> RatioStats:
        return self.compare_calls(self.prepare(candidate, example), self.prepare(base, example), max_seconds)

    def compare_calls(self, cand: InferenceCall, base: InferenceCall, max_seconds: float | None = None) -> RatioStats:
        s = self.settings
        cap = s.max_seconds if max_seconds is None else max_seconds
        ratios: list[float] = []
        tc: list[float] = []
        tb: list[float] = []
        start = time.perf_counter()
        converged = False
        with self._exclusive():
            for _ in range(s.warmup):
                base()
                cand()
            while True:
                for i in range(s.repeats):
                    if i % 2 == 0:  # ABBA ordering cancels linear drift within each pair of pairs
                        b, c = self._timer(base), self._timer(cand)
                    else:
                        c, b = self._timer(cand), self._timer(base)
                    tb.append(b)
                    tc.append(c)
                    ratios.append(c / b)
                lo, hi = median_ci(ratios, s.confidence)
                med = statistics.median(ratios)
                if (hi - lo) / 2 <= s.ci_halfwidth * med:
                    converged = True
                    break
                if time.perf_counter() - start >= cap:
                    break
        return RatioStats(ratio=med, ci_low=lo, ci_high=hi, confidence=s.confidence, pairs=len(ratios),
                          converged=converged, seconds=time.perf_counter() - start,
                          candidate=LatencyStats.of(tc), base=LatencyStats.of(tb), settings=s.describe())
