"""The preflight: build a job's pruning space and prove that its extreme plans run, before any search.

Users bring their own networks, and Torch-Pruning fails on some couplings in ways that only show
when a plan is applied or run. So before a job is queued (REST, CLI) and again when it starts, the
space is built, the most pruned plan and a middle plan are applied, and each pruned model runs a
forward pass on one batch and must give the base model's output shape.

A layer whose pruning fails at every ratio is excluded automatically, with the reason kept in
`space.excluded` (and in the plan), because no setting could make it work. A failure that a spec
field causes is refused instead, with a `PreflightError` whose message starts with that field and
names the layer: `max_ratio` when only the most pruned plan fails, `round_to`/`max_ratio` when
they leave nothing to search, `dimensions` when no layer can be pruned at all. Nothing raised here
is a bare exception from inside PyTorch or Torch-Pruning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from search_spaces.criteria import Batches
from search_spaces.layers import LayerError, SpaceError
from search_spaces.plan import ModelIdentity
from search_spaces.space import PruningSpace

MAX_ROUNDS = 8  # exclusion rounds; each round excludes at least one layer


class PreflightError(SpaceError):
    """A spec the model cannot honour; `field` is the spec field to set, the message names the layer."""

    def __init__(self, field: str, message: str, layers: Sequence[str] = ()) -> None:
        self.field = field
        self.layers = tuple(layers)
        super().__init__(f"{field}: {message}")


def checked_space(model: nn.Module, identity: ModelIdentity, *, criterion: str = "l1", round_to: int = 1,
                  max_ratio: float = 0.9, keep_layers: Iterable[str] = (), dimensions: Sequence[str] = ("channel",),
                  nm: tuple[int, int] = (2, 4), calibration: Batches | None = None, seed: int = 0,
                  phase: str = "preflight") -> PruningSpace:
    """The job's pruning space, with every layer that cannot be pruned excluded (reason recorded) or
    the spec refused; any unexpected failure becomes a `PreflightError` naming the phase."""
    try:
        return _checked(model, identity, criterion, round_to, max_ratio, tuple(keep_layers), dimensions, nm,
                        calibration, seed)
    except SpaceError:
        raise
    except Exception as exc:  # a failure none of the checks foresaw still names where it happened
        raise PreflightError("model", f"the {phase} phase failed inside PyTorch or Torch-Pruning "
                             f"({type(exc).__name__}: {exc})") from exc


def _checked(model: nn.Module, identity: ModelIdentity, criterion: str, round_to: int, max_ratio: float,
             keep: tuple[str, ...], dimensions: Sequence[str], nm: tuple[int, int], calibration: Batches | None,
             seed: int) -> PruningSpace:
    batch = torch.randn(2, identity.in_channels, identity.input_size, identity.input_size,
                        generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            want = tuple(model.eval()(batch).shape)
    except Exception as exc:  # the user's model itself does not run on its declared input
        raise PreflightError("model.input_size", f"the base model fails on a batch of shape {tuple(batch.shape)} "
                             f"({type(exc).__name__}: {exc})") from exc
    calib = list(calibration) if calibration is not None else None
    exclude: dict[str, str] = {}
    for _ in range(MAX_ROUNDS):
        space = _build(model, identity, criterion, round_to, max_ratio, keep, dimensions, nm, calib, seed, exclude)
        _check_searchable(space, round_to, max_ratio)
        found = _failures(space, batch, want)
        if not found:
            return space
        exclude = {**space.excluded, **found}
    raise PreflightError("keep_layers", f"pruning still fails after excluding {sorted(exclude)}; add the layers "
                         "named there to keep_layers", list(exclude))


def _build(model: nn.Module, identity: ModelIdentity, criterion: str, round_to: int, max_ratio: float,
           keep: tuple[str, ...], dimensions: Sequence[str], nm: tuple[int, int], calib: Batches | None, seed: int,
           exclude: Mapping[str, str]) -> PruningSpace:
    try:
        return PruningSpace(model, identity, criterion=criterion, round_to=round_to, max_ratio=max_ratio,
                            keep_layers=keep, calibration=calib, seed=seed, kinds=dimensions, nm=nm, exclude=exclude)
    except SpaceError as exc:
        if exclude and str(exc).startswith("model: no prunable dimension"):
            raise PreflightError("dimensions", f"no layer of this model can be pruned as {'/'.join(dimensions)}: "
                                 + _listing(exclude) + "; try other dimensions (unstructured keeps every shape)",
                                 list(exclude)) from exc
        raise
    except Exception as exc:  # Torch-Pruning could not trace the model at all
        raise PreflightError("dimensions", f"Torch-Pruning cannot trace this model for {'/'.join(dimensions)} "
                             f"pruning ({type(exc).__name__}: {exc}); try dimensions: [unstructured]") from exc


def _listing(reasons: Mapping[str, str]) -> str:
    return "; ".join(f"{layer!r}: {why}" for layer, why in reasons.items())


def _check_searchable(space: PruningSpace, round_to: int, max_ratio: float) -> None:
    """Refuse settings that leave no dimension anything to remove."""
    if any(d.max_ratio > 0 for d in space.dimensions):
        return
    widest = max(space.dimensions, key=lambda d: d.units)
    if round_to > 1:
        raise PreflightError("round_to", f"{round_to} leaves no layer a smaller width (the widest group, "
                             f"{widest.name!r}, has {widest.units} units); set a smaller round_to",
                             [widest.name])
    raise PreflightError("max_ratio", f"{max_ratio} removes nothing from any layer (the widest group, "
                         f"{widest.name!r}, has {widest.units} units); set a larger max_ratio", [widest.name])


def _failures(space: PruningSpace, batch: torch.Tensor, want: tuple[int, ...]) -> dict[str, str]:
    """{layer: reason} to exclude; raises for a failure a spec field causes."""
    smallest = space.smallest()
    middle = {d.name: 0.0 if d.binary else d.snap(d.max_ratio / 2) for d in space.dimensions}
    bad = next((plan for plan in (smallest, middle) if _run(space, plan, batch, want) is not None), None)
    if bad is None:
        return {}
    found: dict[str, str] = {}
    together = []
    for name in _culprits(space, [n for n, r in bad.items() if r > 0], bad, batch, want):
        d = space.dimension(name)
        at_max = _run(space, {name: smallest[name]}, batch, want)
        at_mid = None if d.binary else _run(space, {name: middle[name]}, batch, want)
        if at_mid is not None or (d.binary and at_max is not None):
            found[d.root] = f"the pruned model fails: {at_mid or at_max}"
        elif at_max is not None:
            raise PreflightError("max_ratio", f"pruning {name!r} to {d.min_kept} of its {d.units} units (ratio "
                                 f"{d.max_ratio:.3g}) fails ({at_max}) while ratio {middle[name]:.3g} works; lower "
                                 f"max_ratio or add {d.root!r} to keep_layers", [name])
        else:
            together.append(name)
    if not found:  # only a combination fails, with no single layer to blame
        raise PreflightError("keep_layers", f"pruning {together[:8]} together fails although each prunes alone; add "
                             "some of them to keep_layers", together)
    return found


def _culprits(space: PruningSpace, names: list[str], ratios: Mapping[str, float], batch: torch.Tensor,
              want: tuple[int, ...]) -> list[str]:
    """The dimensions among `names` whose pruning fails, by halving (all of them if only together)."""
    if len(names) <= 1:
        return names
    half = len(names) // 2
    found = []
    for part in (names[:half], names[half:]):
        if _run(space, {n: ratios[n] for n in part}, batch, want) is not None:
            found += _culprits(space, part, ratios, batch, want)
    return found or names


def _run(space: PruningSpace, ratios: Mapping[str, float], batch: torch.Tensor, want: tuple[int, ...]) -> str | None:
    """None if the plan prunes and the pruned model gives the expected output shape, else why not."""
    try:
        model = space.structure(ratios)
        with torch.no_grad():
            out = model(batch)
    except LayerError as exc:
        return str(exc).partition(": ")[2]
    except Exception as exc:  # PyTorch raises anything from a layer that got the wrong width
        return f"{type(exc).__name__}: {exc}"
    if tuple(out.shape) != want:
        return f"output shape {tuple(out.shape)} instead of {want}"
    return None
