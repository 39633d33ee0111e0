"""Make values storable in a JSON column on every backend.

Events and progress come from training code (numpy scalars, paths, NaN accuracies). PostgreSQL's
json type rejects NaN/Infinity and json.dumps rejects numpy types, so a stray value would lose an
event or crash a job; converting here keeps the stored data valid JSON and detached from the caller.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import PurePath
from typing import Any


def jsonable(value: Any) -> Any:
    """A deep copy of `value` built from dict/list/str/int/float/bool/None only."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    tolist = getattr(value, "tolist", None)  # small arrays
    if callable(tolist):
        return jsonable(tolist())
    return str(value)


def json_object(value: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")
    out: dict[str, Any] = jsonable(value)
    return out
