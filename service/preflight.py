"""Checks a valid spec must pass before it is queued: what only the server can know. Shared by
POST /jobs, POST/PATCH /schedules and the pipeline (the budget check).

The checks raise `SpecRefused`, a domain error naming each field; `service/api/deps.py` maps it to
HTTP. `invalid` (422) is a value wrong in itself (an architecture the catalog lacks); `unsatisfiable`
(400) a valid spec the server cannot satisfy (unknown upload, a device no node has, a budget the
space cannot reach); `unavailable` (503) a check that could not run. Every catalog problem of one spec
is named at once, also next to the schema's own errors (`catalog_errors` runs on the raw body when
the schema fails).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from search_spaces.datasets import available_datasets, missing_files
from search_spaces.depth import bypassable_blocks
from search_spaces.layers import SpaceError
from search_spaces.plan import ModelIdentity
from search_spaces.preflight import PreflightError, checked_space
from search_spaces.space import PruningSpace
from search_spaces.weights import WeightsError, load_into, read_state_dict
from search_spaces.zoo import UnknownModelError, available_models, build_model
from service.config import Settings
from service.spec import JobSpec

# Upload ids are server-made hex names (uuid4 from POST /weights, sha256 for scheduled checkpoints):
# anything else could be a path.
UPLOAD_REF = re.compile(r"upload:(?:[0-9a-f]{32}|[0-9a-f]{64})")


Kind = Literal["invalid", "unsatisfiable", "unavailable"]
Problem = tuple[tuple[str | int, ...], str]  # (field path, message): the one shape of every refusal


@dataclass
class SpecRefused(Exception):
    """What a spec cannot do here: each problem as (field path, message), which kind of problem, and where
    the fields are (the request body, or a query string)."""

    kind: Kind
    problems: list[Problem] = field(default_factory=list)
    where: Literal["body", "query"] = "body"

    def __str__(self) -> str:
        return "; ".join(f"{'.'.join(map(str, loc))}: {msg}" if loc else msg for loc, msg in self.problems)

    def moved(self, relocate: Callable[[tuple[str | int, ...]], tuple[str | int, ...]]) -> SpecRefused:
        """The same problems under other field paths (a schedule's job template lives under `job`)."""
        return SpecRefused(self.kind, [(relocate(loc) if loc else loc, msg) for loc, msg in self.problems], self.where)


def unsatisfiable(loc: str, msg: str) -> SpecRefused:
    return SpecRefused("unsatisfiable", [(tuple(loc.split(".")), msg)])


def space_refusal(exc: SpaceError) -> tuple[str, str]:
    """The spec field a space error is about, and its message without that prefix: the submission check
    and the catalog's space preview name the same field for the same failure."""
    fld, _, msg = str(exc).partition(": ")
    loc = exc.field if isinstance(exc, PreflightError) else "keep_layers" if fld == "keep_layers" else "dimensions"
    return loc, msg or str(exc)


def identity_of(spec: JobSpec) -> ModelIdentity:
    return ModelIdentity(**spec.model.model_dump(include={"arch", "num_classes", "in_channels", "input_size"}))


def space_settings(spec: JobSpec) -> dict[str, Any]:
    """The spec fields that shape the space (the criterion only ranks channels, so it is left out): one
    mapping, so the REST check, the CLI and the pipeline build the same space and refuse the same specs."""
    return {"round_to": spec.round_to, "max_ratio": spec.max_ratio, "keep_layers": spec.keep_layers,
            "dimensions": spec.dimensions, "nm": spec.nm_pair}


def preflight_spec(spec: JobSpec, factories: Mapping[str, str] | None) -> PruningSpace:
    """The spec's space on a freshly built (untrained) model: the structure, and so every exclusion
    and refusal, does not depend on the weights. Raises PreflightError/SpaceError naming the field."""
    return checked_space(build_model(spec.model, factories), identity_of(spec), **space_settings(spec))


def catalog_errors(body: Mapping[str, Any], settings: Settings) -> list[Problem]:
    """Names the catalog lacks (`model.arch`, `dataset.name`) in a raw or validated body."""
    errors: list[Problem] = []
    model, dataset = body.get("model"), body.get("dataset")
    arch = model.get("arch") if isinstance(model, Mapping) else None
    if isinstance(arch, str):
        known = available_models(settings.model_factories)
        prefixes = tuple(k.split(":", 1)[0] + ":" for k in known if k.endswith(">"))
        if arch not in known and not (arch.startswith(prefixes) and arch.split(":", 1)[1]):
            errors.append((("model", "arch"), f"unknown architecture {arch!r}; available: {known}"))
    name = dataset.get("name") if isinstance(dataset, Mapping) else None
    if isinstance(name, str) and (name not in available_datasets() or name.startswith("imagefolder:")):
        known = [n for n in available_datasets() if not n.startswith("imagefolder")]
        errors.append((("dataset", "name"), f"unknown dataset {name!r}; available: {known}"))
    return errors


def check_submission(spec: JobSpec, settings: Settings) -> None:
    """Raise the problems found (every catalog one at once, else the first 400); runs in a worker thread
    (it builds the model once)."""
    m, d = spec.model, spec.dataset
    weights = m.weights
    if errors := catalog_errors(spec.model_dump(), settings):
        raise SpecRefused("invalid", errors)
    if isinstance(weights, str) and not UPLOAD_REF.fullmatch(weights):
        raise unsatisfiable("model.weights",
                            "the server takes uploaded weights (upload:<id> from POST /weights) or {train_epochs: N}")
    if d.download:
        raise unsatisfiable("dataset.download",
                            "the server downloads nothing; its operator provisions datasets (dataset_roots)")
    if getattr(spec.strategy, "storage", None) is not None:
        raise unsatisfiable("strategy.storage",
                            "the server keeps each Optuna study in the job's folder; storage is for local runs")
    if d.root is not None and d.root not in settings.dataset_roots.values():
        raise unsatisfiable("dataset.root", "dataset.root must be left empty (the server's configured root is used)")
    searched = missing_files(d.name, d.root or settings.dataset_roots.get(d.name))
    if searched is not None:  # a job that would only fail in its data phase: refuse it now
        raise unsatisfiable("dataset.name",
                            f"this server cannot load dataset {d.name!r}: its files are not in {searched}. The "
                            f"server's operator provides it with PRUNESEARCH_DATASET_ROOTS, e.g. "
                            f"PRUNESEARCH_DATASET_ROOTS='{{\"{d.name}\": \"/data/{d.name}\"}}'")
    check_device(spec, settings)
    try:
        model = build_model(m, settings.model_factories)
    except UnknownModelError as exc:
        raise SpecRefused("invalid", [(("model", "arch"), str(exc).removeprefix("model.arch: "))]) from exc
    if isinstance(weights, str):
        path = settings.upload_file(weights.split(":", 1)[1])
        if not path.is_file():
            raise unsatisfiable("model.weights", f"no uploaded weights {weights!r}")
        try:
            load_into(model, read_state_dict(path), weights)
        except WeightsError as exc:
            raise unsatisfiable("model.weights", str(exc)) from exc
    try:  # builds the space, applies its extreme plans and runs them: what cannot work is refused here
        space = checked_space(model, identity_of(spec), **space_settings(spec))
    except SpaceError as exc:  # unknown keep_layers, a layer the settings break, nothing left to prune
        raise unsatisfiable(*space_refusal(exc)) from exc
    if (why := unreachable(spec, space)) is not None:
        raise unsatisfiable("budget.target", why)


def check_device(spec: JobSpec, settings: Settings) -> None:
    """The device (and `device.node`) must exist in the inventory of where the job will run: the
    cluster for Ray jobs when an address is configured, else this machine."""
    from service.config import RayUnavailableError
    from service.inventory import inventory, local_inventory, match_device

    try:
        nodes = inventory(settings) if spec.execution.backend == "ray" else local_inventory()
    except RayUnavailableError as exc:
        raise SpecRefused("unavailable", [((), f"cannot check device: {exc}")]) from exc
    found, fld, why = match_device(nodes, spec.device)
    if not found and fld is not None:
        raise unsatisfiable(f"device.{fld}", why)


def unreachable(spec: JobSpec, space: PruningSpace) -> str | None:
    """Why a FLOPs or params budget cannot be met by any plan of `space` (None if it can, and for latency:
    only the device can say). The one reachability check: submission and the pipeline both ask it."""
    b = spec.budget
    if b.metric == "latency_ms":
        return None
    flops, params = space.cost(space.smallest())
    smallest, base = (flops, space.flops) if b.metric == "flops" else (params, space.params)
    if smallest <= b.limit(base):
        return None
    return (f"unreachable: the most pruned plan this space allows has {smallest / base:.3f} of the base {b.metric} "
            f"(max_ratio={spec.max_ratio})")


def measured_floor(spec: JobSpec, space: PruningSpace, timed: Sequence[float]) -> str:
    """Why no plan a job timed met its latency budget, and what to set: its most pruned timing, and the
    spec fields that would let the space prune further (a larger `max_ratio`; whole residual blocks, which
    at batch 1 remove the per-operator time that thinner layers keep: MobileNetV2 at 90% of every layer's
    channels still runs at 0.54x of its base, with every residual block removed too at 0.25x)."""
    floor = f"the most pruned plan it timed ran at {min(timed):.3f}x of the base" if timed else "it timed no plan"
    hints = [f"max_ratio above {spec.max_ratio}"] if spec.max_ratio < 0.95 else []
    if "block" not in spec.dimensions:
        example = torch.zeros(1, space.identity.in_channels, space.identity.input_size, space.identity.input_size)
        if blocks := bypassable_blocks(space.base, example):
            hints.append(f'"block" in dimensions (this model has {len(blocks)} residual blocks it can drop)')
    return (f"budget.target: unreachable on this device: {floor}, over the budget of "
            f"{spec.budget.target}{'x the base' if spec.budget.relative else ' ms'}"
            + (f"; to prune further set {' or '.join(hints)}" if hints else ""))


def example_job() -> dict[str, Any]:
    return {"name": "digits-demo", "model": {"arch": "small_cnn", "num_classes": 10, "in_channels": 1,
                                             "input_size": 8, "weights": {"train_epochs": 20}},
            "dataset": {"name": "digits", "val_size": 300}, "device": {"name": "cpu", "threads": 1, "batch_size": 32},
            "budget": {"metric": "latency_ms", "target": 0.6}, "strategy": {"name": "uniform", "steps": 8}}
