"""A job spec's pruning-space settings, and its preflight before any data is touched.

One place maps the spec's fields onto `search_spaces.preflight.checked_space`, so the REST check,
the CLI and the pipeline's space phase build the same space and refuse the same specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search_spaces.plan import ModelIdentity
from search_spaces.preflight import checked_space
from search_spaces.space import PruningSpace
from search_spaces.zoo import build_model
from service.spec import JobSpec


def identity_of(spec: JobSpec) -> ModelIdentity:
    return ModelIdentity(**spec.model.model_dump(include={"arch", "num_classes", "in_channels", "input_size"}))


def space_settings(spec: JobSpec) -> dict[str, Any]:
    """The spec fields that shape the space (the criterion only ranks channels, so it is left out)."""
    return {"round_to": spec.round_to, "max_ratio": spec.max_ratio, "keep_layers": spec.keep_layers,
            "dimensions": spec.dimensions, "nm": spec.nm_pair}


def preflight_spec(spec: JobSpec, factories: Mapping[str, str] | None) -> PruningSpace:
    """The spec's space on a freshly built (untrained) model: the structure, and so every exclusion
    and refusal, does not depend on the weights. Raises PreflightError/SpaceError naming the field."""
    return checked_space(build_model(spec.model, factories), identity_of(spec), **space_settings(spec))
