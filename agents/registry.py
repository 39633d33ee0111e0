"""Strategy name -> agent class, imported on first use (SB3 and Optuna are slow to import)."""

from __future__ import annotations

import importlib
from typing import Any

from agents.base import Agent, SearchContext

AGENTS: dict[str, str] = {
    "uniform": "agents.bisection:UniformAgent",
    "global": "agents.bisection:GlobalAgent",
    "sensitivity": "agents.sensitivity:SensitivityAgent",
    "netadapt": "agents.netadapt:NetAdaptAgent",
    "amc": "agents.amc:AMCAgent",
    "optuna": "agents.optuna_search:OptunaAgent",
    "halp": "agents.halp:HALPAgent",
}


def agent_class(name: str) -> type[Agent]:
    try:
        module, cls = AGENTS[name].split(":")
    except KeyError:
        raise ValueError(f"strategy.name: unknown strategy {name!r}; available: {sorted(AGENTS)}") from None
    found: type[Agent] = getattr(importlib.import_module(module), cls)
    return found


def make_agent(name: str, ctx: SearchContext, params: dict[str, Any]) -> Agent:
    return agent_class(name)(ctx, **params)
