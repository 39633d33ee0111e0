"""Strategy name -> agent class, and each agent's parameters from the job spec."""

from __future__ import annotations

from typing import Any

from agents.base import Agent, SearchContext
from agents.bisection import GlobalAgent, UniformAgent

AGENTS: dict[str, type[Agent]] = {cls.name: cls for cls in (UniformAgent, GlobalAgent)}


def make_agent(name: str, ctx: SearchContext, params: dict[str, Any]) -> Agent:
    try:
        cls = AGENTS[name]
    except KeyError:
        raise ValueError(f"strategy.name: unknown strategy {name!r}; available: {sorted(AGENTS)}") from None
    return cls(ctx, **params)
