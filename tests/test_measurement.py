"""Latency meter, lookup table and accuracy helpers: well-formed results, no timing asserts."""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from measurement.accuracy import accuracy, recalibrate_batchnorm
from measurement.latency import LatencyMeter, LatencyStats, MeterSettings, median_ci, pinned
from measurement.lut import PASSES, LatencyTable
from measurement.runtimes import RuntimeUnavailableError, on_device, prepare
from tests.conftest import make_space, synthetic_splits

FAST = MeterSettings(batch_size=4, warmup=1, repeats=6, max_seconds=0.5)


def test_stats_are_well_formed() -> None:
    s = LatencyStats.of([3.0, 1.0, 2.0, 4.0, 10.0])
    assert s.median_ms == 3.0 and s.n == 5
    assert s.p10_ms <= s.median_ms <= s.p90_ms
    assert s.cv > 0


def test_median_ci_brackets_the_median_and_narrows_with_samples() -> None:
    g = torch.Generator().manual_seed(0)
    few = (1 + 0.1 * torch.randn(20, generator=g)).tolist()
    many = (1 + 0.1 * torch.randn(2000, generator=g)).tolist()
    lo_f, hi_f = median_ci(few, 0.95)
    lo_m, hi_m = median_ci(many, 0.95)
    assert lo_f <= sorted(few)[10] <= hi_f
    assert hi_m - lo_m < hi_f - lo_f


@pytest.mark.parametrize("runtime", ["eager", "torchscript", "onnxruntime"])
def test_meter_measures_every_runtime(runtime: str) -> None:
    space = make_space("small_cnn", 8)
    meter = LatencyMeter(MeterSettings(**{**FAST.__dict__, "runtime": runtime}))
    x = meter.example(1, 8)
    stats = meter.measure(space.base, x)
    assert stats.n == FAST.repeats and stats.median_ms > 0 and stats.p10_ms <= stats.p90_ms
    ratio = meter.compare(space.apply(space.uniform(0.5)), space.base, x)
    assert ratio.ci_low <= ratio.ratio <= ratio.ci_high
    assert ratio.pairs >= FAST.repeats and ratio.pairs % FAST.repeats == 0
    assert ratio.settings["runtime"] == runtime and ratio.settings["threads"] == 1
    assert ratio.settings["cores"] == [sorted(os.sched_getaffinity(0))[-1]]


def test_meter_restores_threads_and_affinity() -> None:
    torch.set_num_threads(2)
    before = os.sched_getaffinity(0)
    space = make_space("small_cnn", 8)
    meter = LatencyMeter(FAST)
    meter.measure(space.base, meter.example(1, 8))
    assert torch.get_num_threads() == 2
    assert os.sched_getaffinity(0) == before
    with pinned([min(before)]):
        assert os.sched_getaffinity(0) == {min(before)}
    assert os.sched_getaffinity(0) == before


def test_single_thread_timing_keeps_the_other_threads_of_the_process_off_the_timed_core() -> None:
    """A Ray driver or worker hosts dozens of threads: pinned onto the timed core they would share it."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs two cores")
    core = max(allowed)
    release = threading.Event()
    ready = threading.Event()
    tid: list[int] = []

    def helper() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        release.wait(10)

    t = threading.Thread(target=helper)
    t.start()
    ready.wait(10)
    try:
        with pinned([core], only_caller=True):
            assert os.sched_getaffinity(0) == {core}  # pid 0: the calling thread
            assert os.sched_getaffinity(tid[0]) == allowed - {core}
        assert os.sched_getaffinity(tid[0]) == allowed and os.sched_getaffinity(0) == allowed
    finally:
        release.set()
        t.join()


def test_meters_fix_the_allocator_state_and_say_so() -> None:
    """glibc's adaptive mmap/trim thresholds made latency depend on the process's history (see
    bench/allocator_state.py); every meter fixes them and every report records it."""
    meter = LatencyMeter(FAST)
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert meter.steady_allocator is on_glibc
    assert meter.settings.describe()["steady_allocator"] is on_glibc


def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeUnavailableError, match="CUDA is not available"):
        prepare(make_space("small_cnn", 8).base, torch.zeros(1, 1, 8, 8), "eager", "cuda:0", 1)


def test_moving_to_the_timing_device_leaves_the_callers_model_in_place() -> None:
    """The CUDA path times a copy: the space's base must stay on the CPU for pruning and scoring
    ("meta" stands in for a GPU here; CI has none)."""
    space = make_space("small_cnn", 8)
    placed = on_device(space.base, "meta")
    assert {p.device.type for p in placed.parameters()} == {"meta"}
    assert {p.device.type for p in space.base.parameters()} == {"cpu"}
    space.cost(space.uniform(0.5))  # still traceable on the CPU example


@pytest.mark.slow
def test_lookup_table_predicts_and_caches(tmp_path: Path) -> None:
    space = make_space("resnet20", 8)
    meter = LatencyMeter(FAST)
    table = LatencyTable(space, meter, tmp_path, repeats=3)
    timed = table.build()
    assert timed > 0
    full = {d.name: d.units for d in space.dimensions}
    half = space.kept_for(space.uniform(0.5))
    layers_full, layers_half = table.predict(full), table.predict(half)  # uncalibrated: the layers alone
    table.calibrate(2 * layers_full)  # the layers add up to less than the base: the rest is a constant
    assert table.predict(full) == pytest.approx(2 * layers_full) and table.layer_scale == 1.0
    assert table.overhead_ms == pytest.approx(layers_full)
    table.calibrate(0.5 * layers_full)  # more than the base: scaled down, never a negative constant
    assert table.overhead_ms == 0.0 and table.predict(full) == pytest.approx(0.5 * layers_full)
    assert table.raw_ratio(half) == pytest.approx(layers_half / layers_full)
    assert set(table.breakdown(half)) == {layer.name for layer in space.layers}
    assert all(v > 0 for v in table.breakdown(half).values())
    again = LatencyTable(space, meter, tmp_path, repeats=3)
    assert again.build() == 0  # every grid point came from the on-disk cache
    again.calibrate(0.5 * layers_full)
    assert again.breakdown(half) == table.breakdown(half)


def test_a_cached_table_is_not_reused_on_other_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two VMs that report the same CPU model timed the same plan 12% apart: a table cached on one must
    not price plans on a machine whose kernels dispatch to another instruction set."""
    import measurement.latency as latency

    space = make_space("resnet20", 8)
    meter = LatencyMeter(FAST)
    here = LatencyTable(space, meter, tmp_path, repeats=3).cache_path
    other = "AVX2" if latency.cpu_isa() != "AVX2" else "AVX512"  # never this machine's own (it failed on AVX512)
    monkeypatch.setattr(latency, "cpu_isa", lambda: other)
    elsewhere = LatencyTable(space, meter, tmp_path, repeats=3).cache_path
    assert meter.settings.describe()["cpu_isa"] == other
    assert here is not None and elsewhere is not None and here != elsewhere


def test_a_slow_spell_while_the_table_is_built_does_not_stay_in_it(tmp_path: Path) -> None:
    """A VM's slow spell spans several grid points (a one-pass table on an AMD EPYC VM held 49 of 1824 points
    at over 1.3x their time re-taken minutes later): each point is timed once per pass, the passes in
    opposite orders, and the faster kept, so a spell over the first pass's first points leaves no trace."""
    from tests.conftest import macs_timer

    space = make_space("small_cnn", 8)
    steady = LatencyTable(space, LatencyMeter(FAST, timer=macs_timer), tmp_path / "steady", repeats=3)
    points = steady.build()
    calls = 0

    def spell_timer(call: Callable[[], object]) -> float:  # 3x slow for the first third of the first pass
        nonlocal calls
        calls += 1
        return macs_timer(call) * (3 if calls <= points else 1)

    spelled = LatencyTable(space, LatencyMeter(FAST, timer=spell_timer), tmp_path / "spell", repeats=3)
    assert spelled.build() == points
    assert calls == PASSES * points * 3  # every point timed once per pass (3 repeats; warm-up is untimed)
    assert spelled.entries == steady.entries


def test_a_dropped_block_takes_its_layers_share_of_the_rest(tmp_path: Path) -> None:
    """The rest of the base's time is per operator: channels keep all of it, a dropped block its layers' share
    (as one constant, MobileNetV2's batch-1 depth plans were predicted at 0.72x and ran at 0.35x)."""
    from tests.conftest import macs_timer

    space = make_space("resnet20", 8, kinds=("channel", "block"))
    table = LatencyTable(space, LatencyMeter(FAST, timer=macs_timer), tmp_path, repeats=3)
    table.build()
    full, half = space.kept_for({}), space.kept_for(space.uniform(0.5))
    layers_full, layers_half = table.predict(full), table.predict(half)
    table.calibrate(3 * layers_full)  # the rest is twice the layers
    assert table.predict(full) == pytest.approx(3 * layers_full)
    assert table.predict(half) == pytest.approx(layers_half + 2 * layers_full)  # narrower layers: all of the rest
    block = next(d for d in space.dimensions if d.granularity == "block")
    share = 2 * layers_full / len(space.layers)
    dropped = {**full, block.name: 0}
    own = sum(table.breakdown(full)[n] - share for n in block.covers)
    assert own > 0 and table.predict(full) - table.predict(dropped) == pytest.approx(own + len(block.covers) * share)


@pytest.mark.slow
def test_a_base_timed_slow_does_not_set_the_table_s_constant(tmp_path: Path) -> None:
    """The job's table is fitted to the faster of the base-latency phase's timing and one taken right after
    the layers: a base timed 5x slow (a busy machine) would otherwise become a constant under every plan."""
    from service.pipeline import build_lut
    from tests.conftest import macs_timer

    space = make_space("small_cnn", 8)
    meter = LatencyMeter(FAST, timer=macs_timer)
    true_ms = meter.measure(space.base, meter.example(1, 8), repeats=3).median_ms
    slow = build_lut(space, meter, 5 * true_ms, tmp_path, lambda event: None)
    right = build_lut(space, meter, true_ms, tmp_path, lambda event: None)
    assert slow.overhead_ms == right.overhead_ms and slow.layer_scale == right.layer_scale
    assert slow.predict({d.name: d.units for d in space.dimensions}) == pytest.approx(true_ms)


def test_bn_recalibration_recovers_pruned_accuracy_statistics() -> None:
    data = synthetic_splits(1, 8)
    space = make_space("small_cnn", 8)
    pruned = space.apply(space.uniform(0.5))
    bn = pruned.stem[1]  # type: ignore[index]
    recalibrate_batchnorm(pruned, data.train, batches=2, batch_size=32)
    stem_out = pruned.stem[0](data.train.x[:64])  # type: ignore[index]
    assert torch.allclose(bn.running_mean, stem_out.mean((0, 2, 3)), atol=0.2)
    assert bn.momentum == 0.1  # restored
    assert 0.0 <= accuracy(pruned, data.val) <= 1.0
