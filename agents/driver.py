"""The search loop: ask the agent, evaluate through whatever backend is given, tell the agent."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agents.base import Agent, Candidate, Emit, Evaluation

EvaluateFn = Callable[[Sequence[Candidate]], list[Evaluation]]


@dataclass
class SearchOutcome:
    best: Evaluation | None
    history: list[Evaluation]
    seconds: float


def best_so_far(history: Sequence[Evaluation]) -> Evaluation | None:
    feasible = [e for e in history if e.meets_budget and e.val_acc is not None]
    return max(feasible, key=lambda e: e.val_acc or 0.0) if feasible else None


def run_search(agent: Agent, evaluate: EvaluateFn, emit: Emit) -> SearchOutcome:
    start = time.perf_counter()
    history: list[Evaluation] = []
    planned = agent.planned_evaluations()
    while candidates := agent.suggest():
        results = evaluate(candidates)
        history.extend(results)
        agent.observe(results)
        best = agent.best()
        for r in results:
            emit({"type": "evaluation", "done": len(history), "planned": planned, **r.record(),
                  "best_val_acc": best.val_acc if best else None,
                  "elapsed_s": round(time.perf_counter() - start, 2)})
    return SearchOutcome(agent.best(), history, time.perf_counter() - start)
