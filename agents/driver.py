"""The search loop: ask the agent, evaluate through whatever backend is given, tell the agent.

After every observed batch the agent's state and the history so far can be checkpointed; a
search resumed from such a checkpoint continues where it stopped and evaluates no candidate twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.base import Agent, Candidate, Emit, Evaluation

EvaluateFn = Callable[[Sequence[Candidate]], list[Evaluation]]
Checkpoint = dict[str, Any]  # {"agent": state_dict, "history": [records]}


@dataclass
class SearchOutcome:
    best: Evaluation | None
    history: list[Evaluation]
    seconds: float


def run_search(agent: Agent, evaluate: EvaluateFn, emit: Emit,
               checkpoint: Callable[[Checkpoint], None] | None = None,
               resume: Checkpoint | None = None) -> SearchOutcome:
    start = time.perf_counter()
    history: list[Evaluation] = []
    if resume is not None:
        history = [Evaluation.from_record(r) for r in resume["history"]]
        if not agent.resumes_by_replay:  # a replay re-records as it goes
            agent.ctx.record(history)
        agent.load_state_dict(resume["agent"], history)
        emit({"type": "resumed", "evaluations": len(history)})
    planned = agent.planned_evaluations()
    while candidates := agent.suggest():
        results = evaluate(candidates)
        history.extend(results)
        agent.ctx.record(results)
        agent.observe(results)
        best = agent.best()
        for r in results:
            emit({"type": "evaluation", "done": len(history), "planned": planned, **r.record(),
                  "best_val_acc": best.val_acc if best else None,
                  "elapsed_s": round(time.perf_counter() - start, 2)})
        if checkpoint is not None and (state := agent.state_dict()) is not None:
            checkpoint({"agent": state, "history": [e.record() for e in history]})
    return SearchOutcome(agent.best(), history, time.perf_counter() - start)
