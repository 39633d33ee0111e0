"""Strategy name -> agent class, imported on first use (SB3 and Optuna are slow to import).

The names and class paths are the strategies' own declarations (`agents.strategies`).
"""

from __future__ import annotations

import importlib
from typing import Any

from agents.base import Agent, SearchContext
from agents.strategies import strategy_models

AGENTS: dict[str, str] = {name: model.agents[name] for name, model in strategy_models().items()}


def name_of(cls: type[Agent]) -> str:
    """The strategy name an agent class is declared under."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    for name, declared in AGENTS.items():
        if declared == path:
            return name
    raise LookupError(f"{path} is not declared by any strategy in agents.strategies")


def agent_class(name: str) -> type[Agent]:
    try:
        module, cls = AGENTS[name].split(":")
    except KeyError:
        raise ValueError(f"strategy.name: unknown strategy {name!r}; available: {sorted(AGENTS)}") from None
    found: type[Agent] = getattr(importlib.import_module(module), cls)
    return found


def make_agent(name: str, ctx: SearchContext, params: dict[str, Any]) -> Agent:
    return agent_class(name)(ctx, **params)
