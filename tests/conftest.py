"""Shared fixtures: tiny models, synthetic data and job specs that run in seconds on 2 cores."""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from agents.strategies import strategy_models
from search_spaces.datasets import DataSplits
from search_spaces.plan import ModelIdentity
from search_spaces.space import PruningSpace
from search_spaces.zoo import build_model
from service.store.engine import redact
from tests.live_server import Server, started, stop

# Small searches for the agent suites: every strategy with the settings it declares to finish in seconds.
FAST_STRATEGIES: dict[str, dict[str, Any]] = {name: model.smoke for name, model in strategy_models().items()}


# What makes a test `live` (the rest are `unit`): a module about Ray, the PostgreSQL side of `db_url`, a
# fixture that starts a server, a cluster or a browser, or a test or fixture body that starts one itself.
LIVE_MODULES = frozenset({"test_ray_backend", "test_ray_cluster", "test_dashboard"})
LIVE_FIXTURES = frozenset({"server", "pg_admin", "browser", "dash", "cluster", "srv", "env"})
LIVE_CALLS = ("started(", "fuzz_server(", '"backend": "ray"', "chromium", "PG_URL", '"service.demo"')  # demo: serves


def is_live(item: pytest.Item) -> bool:
    if item.path.stem in LIVE_MODULES or LIVE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("db_url") == "postgresql":
        return True
    info = getattr(item, "_fixtureinfo", None)
    functions = [getattr(item, "function", None)] + [
        d.func for name, defs in (info.name2fixturedefs.items() if info else ()) if name != "db_url" for d in defs]
    return any(call in inspect.getsource(f) for f in functions if f is not None for call in LIVE_CALLS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test `live`, `slow` or `unit`, so a change can be checked fast (`-m unit`) before `make
    test`. `slow` is marked by hand where a test runs whole searches, jobs or CLI subprocesses (seconds
    each); `live` is found as above; the rest are `unit`."""
    for item in items:
        if is_live(item):
            item.add_marker(pytest.mark.live)
        elif item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.unit)


PG_URL = os.environ.get("PRUNESEARCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def identity(arch: str = "resnet20", in_channels: int = 1, input_size: int = 12) -> ModelIdentity:
    return ModelIdentity(arch=arch, num_classes=10, in_channels=in_channels, input_size=input_size)


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Give BN layers non-trivial statistics and scales so pruning choices depend on the weights."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    return model.eval()


def make_space(arch: str = "resnet20", input_size: int = 12, in_channels: int = 1, **kwargs: Any) -> PruningSpace:
    ident = identity(arch, in_channels, input_size)
    return PruningSpace(trained_like(build_model(ident)), ident, **kwargs)


def synthetic_splits(in_channels: int = 1, input_size: int = 8, n: int = 256) -> DataSplits:
    from types import SimpleNamespace

    from search_spaces.datasets import load_dataset

    spec = SimpleNamespace(name="synthetic", root=None, download=False, val_size=64, train_size=n,
                           test_size=64, seed=0)
    return load_dataset(spec, input_size=input_size, in_channels=in_channels, num_classes=10)


def job_dict(**overrides: Any) -> dict[str, Any]:
    """A valid, fast job: small CNN on synthetic data, FLOPs budget, uniform bisection."""
    job: dict[str, Any] = {
        "name": "tiny",
        "model": {"arch": "small_cnn", "num_classes": 10, "in_channels": 1, "input_size": 8,
                  "weights": {"train_epochs": 1, "batch_size": 64}},
        "dataset": {"name": "synthetic", "val_size": 64, "train_size": 256, "test_size": 64},
        "device": {"name": "cpu", "threads": 1, "batch_size": 8},
        "budget": {"metric": "flops", "target": 0.5},
        "strategy": {"name": "uniform", "steps": 6},
        "measurement": {"max_seconds": 1, "repeats": 5, "warmup": 1},
        "evaluation": {"recalibration_batches": 2, "uniform_sweep": []},  # the sweep has its own tests
        "execution": {"backend": "local"},  # Ray has its own tests; in-process keeps these fast
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict) and key != "strategy":
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    return job


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A real uvicorn job server with tokens (see tests/live_server.py)."""
    srv = started(tmp_path)
    yield srv
    stop(srv)


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """The real PostgreSQL on 127.0.0.1:5432 (skipped without it, failed under PRUNESEARCH_REQUIRE_POSTGRES=1)."""
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        reason = f"PostgreSQL not reachable at {redact(PG_URL)}: {str(exc.orig).strip().splitlines()[0]}"
        if os.environ.get("PRUNESEARCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, and the local PostgreSQL in a schema of its own: store suites run against both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    admin: Engine = request.getfixturevalue("pg_admin")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def macs_timer(call: Callable[[], object]) -> float:
    """A device whose latency is a fixed per-call overhead plus one millisecond per MFLOP: timings
    that repeat exactly. For suites whose subject is the search, not the clock: a tiny model's real
    timings spread by tens of percent between runs, and a lookup table built from them sometimes
    predicts no plan inside the budget at all, so those suites failed by chance."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()
    return 0.5 + counter.get_total_flops() / 1e6
