"""Optuna strategy: TPE for accuracy under the budget, or NSGA-II for an accuracy vs resource Pareto front.

The driver alone evaluates, so the study is run ask-and-tell: `suggest` asks up to `parallel` trials
and returns them as candidates, `observe` tells each trial its result exactly once.

Design choices, and why:

* One continuous float per group, named by the group, in [0, max_ratio]. The space already rounds
  every ratio to a kept-channel count (`round_to`), so a ratio step would only be a second, misaligned
  rounding; a step would also clip `max_ratio` (rarely a multiple of it) and push the exact bisected
  uniform ratio off the grid. A binary dimension (a block, an N:M layer) is categorical: off or on.
* The budget is an Optuna constraint (`Trial.set_constraint`, Optuna 5's replacement for the
  deprecated sampler `constraints_func`), set before `tell` so both TPE and NSGA-II see it. Its sign is
  the evaluator's `meets_budget` (exact FLOPs/params, or the measured latency CI, with tolerance),
  its size how far the plan is from the limit, so Optuna's feasibility and ours never disagree.
* Cheap pre-filter: a plan whose predicted resource (`ctx.resource_ratio`) is over the limit (FLOPs
  and params are exact, so no slack; LUT latency is a prediction, so the budget tolerance) is still
  returned as a candidate, but cost-only (`accuracy=False`): every study trial is then one history
  row and one observation, `planned_evaluations() == trials` holds, and the history shows why it
  has no accuracy. Such a trial is told PRUNED (it was stopped before accuracy was measured) with a
  positive constraint, never given an invented accuracy.
* Trial 0 is the uniform plan that just meets the budget (bisection on the cheap prediction), so
  the search starts from the baseline and can only improve on it. It (and a warm start) is measured
  even where the table rules it out, so a wrong table is corrected before it filters the rest.
* A plan is evaluated once. Continuous ratios round to kept-channel counts, so two trials often name
  the same network; a repeat is told its plan's result (at once, or when a pending first trial of
  that plan is observed) and another trial is asked in its place, so `trials` counts distinct plans.
  After `MAX_REPEATS_PER_TRIAL * trials` repeats the sampler is taken to have run out of new plans and
  the search ends early.
* The best plan is the study's: `study.best_trial` for TPE (the most accurate feasible trial, as
  optuna-dashboard shows it), the most accurate of `study.best_trials` for NSGA-II; `agent.json` and
  the study never disagree.
* Storage: SQLite in the job folder by default, so optuna-dashboard can open it. A study is never
  resumed: the name is "prunesearch", or "prunesearch-2", -3... when the storage already holds one,
  so a re-run never mixes in old trials (the sampler seed, not the name, fixes the candidates).
* Resume after a crash replays the recorded history into a new study (`Agent.replay`): the seeded
  sampler asks for the same trials, which are told their recorded results, so the sampler's state,
  RNG included, is exactly what an uninterrupted search would have, and nothing is evaluated twice.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import Trial, TrialState
from sqlalchemy.engine import make_url

from agents.base import Agent, Candidate, Evaluation, LatencyMode, SearchContext

SamplerName = Literal["tpe", "nsga2"]
STUDY_NAME = "prunesearch"
DB_FILE = "optuna.db"
CONSTRAINT = "budget"  # constraint key: <= 0 means the plan meets the budget
UNIFORM_STEPS = 12
MAX_REPEATS_PER_TRIAL = 4  # repeats asked, per planned trial, before the search is taken as exhausted
_TINY = 1e-12  # a violation strictly above 0 when the evaluator says "not met" at the exact limit


@dataclass(frozen=True)
class TrialResult:
    """One told trial: the evaluation and what the study was told about it."""

    number: int
    evaluation: Evaluation
    resource_ratio: float  # the budget metric relative to the base (measured median for latency)
    feasible: bool
    prefiltered: bool


def sqlite_path(url: str | None) -> Path | None:
    """The database file of a SQLite storage URL (None for in-memory or other databases)."""
    if url is None:
        return None
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def free_study_name(storage: str | None) -> str:
    """`STUDY_NAME`, or the first `STUDY_NAME-k` not in the storage: a new study is never a resumed one."""
    if storage is None:
        return STUDY_NAME
    taken = set(optuna.get_all_study_names(storage))
    name, k = STUDY_NAME, 1
    while name in taken:
        k += 1
        name = f"{STUDY_NAME}-{k}"
    return name


class OptunaAgent(Agent):
    """Ask-and-tell Optuna search over per-group pruning ratios (see the module docstring)."""

    resumes_by_replay = True

    def __init__(self, ctx: SearchContext, sampler: SamplerName = "tpe", trials: int = 60, parallel: int = 2,
                 storage: str | None = None, warm_start: Mapping[str, float] | None = None) -> None:
        super().__init__(ctx)
        if sampler not in ("tpe", "nsga2"):
            raise ValueError(f"strategy.sampler: expected 'tpe' or 'nsga2', got {sampler!r}")
        if trials < 1 or parallel < 1:
            raise ValueError("strategy.trials and strategy.parallel must be at least 1")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sampler_name: SamplerName = sampler
        self.trials, self.parallel = trials, parallel
        if storage is None and ctx.workdir is not None:
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            storage = f"sqlite:///{(ctx.workdir / DB_FILE).resolve()}"
        self.storage = storage
        budget = ctx.budget
        # The most a *predicted* resource may be before the plan is not worth an accuracy evaluation.
        self.prefilter_limit = budget.target_ratio * (1 + budget.tolerance) if budget.measured else budget.target_ratio
        self.study = optuna.create_study(
            storage=storage, study_name=free_study_name(storage), load_if_exists=False, sampler=self._sampler(),
            directions=["maximize"] if sampler == "tpe" else ["maximize", "minimize"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names(["val_acc"] if sampler == "tpe" else ["val_acc", "resource_ratio"])
        self.study.set_user_attr("budget", budget.describe())
        self.uniform_ratio = self._uniform_ratio()
        self.study.enqueue_trial(ctx.space.uniform(self.uniform_ratio), user_attrs={"plan": "uniform"})
        self.warm_start = self._enqueue_warm_start(warm_start) if warm_start else None
        self._asked = 0
        self._pending: dict[int, Trial] = {}  # candidate id -> its asked, not yet told trial
        self._results: dict[int, TrialResult] = {}  # candidate id -> the result its plan's first trial was told
        self._plans: dict[tuple[tuple[str, int], ...], int] = {}  # plan -> candidate id of its first trial
        self._waiting: dict[int, list[Trial]] = {}  # candidate id -> repeats of its plan, told when it is
        self.repeats = 0

    def _sampler(self) -> optuna.samplers.BaseSampler:
        """Seeded from the job, so the same seed asks the same candidates. Optuna 5's TPE defaults
        (multivariate, constant liar) suit correlated groups and batched asks. NSGA-II's population is
        a quarter of the trials (2..50) so a run sees a few generations instead of one random one."""
        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=self.ctx.seed)
        population = max(2, min(50, self.trials // 4))
        return optuna.samplers.NSGAIISampler(seed=self.ctx.seed, population_size=population)

    def _enqueue_warm_start(self, plan: Mapping[str, float]) -> dict[str, float] | None:
        """Trial 1 is a given plan (a scheduled search's previous best), clipped to each group's range;
        groups the space lacks are dropped and a plan sharing no group with the space is skipped."""
        dims = {d.name: d for d in self.ctx.space.dimensions}
        ratios = {name: dims[name].snap(float(r)) for name, r in plan.items() if name in dims}
        if not ratios:
            self.ctx.emit({"type": "warm_start_skipped", "reason": "the plan names none of this model's groups"})
            return None
        self.study.enqueue_trial(ratios, user_attrs={"plan": "warm_start"})
        self.ctx.emit({"type": "warm_start", "groups": len(ratios), "of": len(dims)})
        return ratios

    # -- cheap predictions ------------------------------------------------------------------------
    def _predict(self, ratios: Mapping[str, float]) -> float | None:
        """The budget's resource ratio without evaluating; None for latency without a lookup table."""
        if self.ctx.budget.measured and self.ctx.lut is None:
            return None
        return self.ctx.resource_ratio(ratios)

    def _uniform_ratio(self) -> float:
        """The smallest uniform ratio predicted to meet the budget (bisection; cost is monotone in it).
        Without a lookup table a latency budget falls back to the FLOPs ratio as a rough proxy."""
        space, target = self.ctx.space, self.ctx.budget.target_ratio

        def meets(r: float) -> bool:
            ratios = space.uniform(r)
            predicted = self._predict(ratios)
            if predicted is None:
                predicted = space.cost(ratios)[0] / space.flops
            return predicted <= target

        lo, hi = 0.0, max(d.max_ratio for d in space.dimensions)
        if meets(lo):
            return lo
        if not meets(hi):
            return hi  # unreachable even fully pruned: start from the cheapest uniform plan anyway
        for _ in range(UNIFORM_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if meets(mid) else (mid, hi)
        return hi

    # -- the protocol -----------------------------------------------------------------------------
    def planned_evaluations(self) -> int:
        return self.trials

    def suggest(self) -> list[Candidate]:
        batch: list[Candidate] = []
        while len(batch) < self.parallel and self._asked < self.trials and not self.exhausted:
            trial = self.study.ask()
            ratios = {d.name: trial.suggest_categorical(d.name, [0.0, d.max_ratio]) if d.binary
                      else trial.suggest_float(d.name, 0.0, d.max_ratio) for d in self.ctx.space.dimensions}
            plan = tuple(sorted(self.ctx.space.kept_for(ratios).items()))
            if (first := self._plans.get(plan)) is not None:
                self._repeat(trial, first)
                continue
            self._asked += 1
            predicted = self._predict(ratios)
            # the anchors (the uniform plan, a warm start) are measured whatever the table says: a table that
            # rules them out may be wrong, and one timing corrects it (`SearchContext.record`)
            anchor = trial.user_attrs.get("plan") is not None
            over = predicted is not None and predicted > self.prefilter_limit and not anchor
            latency: LatencyMode = "none"
            if self.ctx.budget.measured:
                latency = "lut" if over else "measured"
            tag: dict[str, Any] = {"trial": trial.number}
            if over:
                tag["prefiltered"] = True
            cand = self.candidate(ratios, accuracy=not over, latency=latency, **tag)
            self._pending[cand.id] = trial
            self._plans[plan] = cand.id
            batch.append(cand)
        return batch

    @property
    def exhausted(self) -> bool:
        """The sampler has asked for already-evaluated plans too often to expect a new one."""
        return self.repeats >= MAX_REPEATS_PER_TRIAL * self.trials

    def _repeat(self, trial: Trial, first: int) -> None:
        """`trial` names the plan of candidate `first`: tell it that result now, or once it is observed."""
        self.repeats += 1
        trial.set_user_attr("repeat_of_candidate", first)
        if first in self._results:
            self._tell(trial, self._results[first].evaluation, repeat=True)
        else:
            self._waiting.setdefault(first, []).append(trial)

    def observe(self, results: Sequence[Evaluation]) -> None:
        for e in results:
            trial = self._pending.pop(e.candidate.id, None)
            if trial is None:
                raise ValueError(f"candidate {e.candidate.id} was not suggested by this agent or was already observed")
            self._tell(trial, e)
            for repeat in self._waiting.pop(e.candidate.id, []):
                self._tell(repeat, e, repeat=True)

    def _measure(self, e: Evaluation) -> tuple[float, float]:
        """(resource ratio, excess over the limit) of an evaluation, in the budget's metric."""
        budget, space = self.ctx.budget, self.ctx.space
        if budget.metric == "flops":
            ratio = e.flops / space.flops
            return ratio, ratio - budget.target_ratio
        if budget.metric == "params":
            ratio = e.params / space.params
            return ratio, ratio - budget.target_ratio
        limit = budget.target_ratio * (1 + budget.tolerance)
        if e.latency_ratio is not None:
            high = e.latency_ci[1] if e.latency_ci is not None else e.latency_ratio
            return e.latency_ratio, high - limit
        predicted = self._predict(e.candidate.ratios)
        ratio = predicted if predicted is not None else e.flops / space.flops
        return ratio, ratio - limit

    def _tell(self, trial: Trial, e: Evaluation, repeat: bool = False) -> None:
        """Tell `trial` the result `e`; a repeat of an evaluated plan is told the same, and is not a result."""
        resource, excess = self._measure(e)
        feasible = e.meets_budget
        trial.set_constraint(CONSTRAINT, min(excess, 0.0) if feasible else max(excess, _TINY))
        prefiltered = bool(e.candidate.tag.get("prefiltered", False))
        for key, value in {"candidate_id": e.candidate.id, "resource_ratio": resource, "flops": e.flops,
                           "params": e.params, "latency_source": e.latency_source,
                           "prefiltered": prefiltered}.items():
            trial.set_user_attr(key, value)
        if e.val_acc is None:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, [e.val_acc] if self.sampler_name == "tpe" else [e.val_acc, resource])
        if repeat:
            return
        self._results[e.candidate.id] = TrialResult(trial.number, e, resource, feasible, prefiltered)
        self.ctx.emit({"type": "trial", "number": trial.number, "val_acc": e.val_acc, "resource_ratio": resource,
                       "feasible": feasible, "prefiltered": prefiltered})

    def _best_trial(self) -> TrialResult | None:
        """The study's best feasible trial (see the module docstring), as the result it was told."""
        if self.sampler_name == "tpe":
            try:
                trial = self.study.best_trial
            except ValueError:  # nothing feasible and complete yet
                return None
        else:
            front = self.study.best_trials
            if not front:
                return None
            trial = max(front, key=lambda t: (t.values[0], -t.values[1], -t.number))
        return self._results.get(trial.user_attrs["candidate_id"])  # a repeat carries its plan's first candidate

    def best(self) -> Evaluation | None:
        best = self._best_trial()
        return best.evaluation if best else None

    def pareto_front(self) -> list[dict[str, Any]]:
        """NSGA-II's feasible front as Optuna computes it (`study.best_trials`), cheapest first."""
        if self.sampler_name != "nsga2":
            return []
        front = [{"number": t.number, "val_acc": t.values[0], "resource_ratio": t.values[1], "ratios": dict(t.params)}
                 for t in self.study.best_trials if "repeat_of_candidate" not in t.user_attrs]  # one point per plan
        return sorted(front, key=lambda p: (p["resource_ratio"], -p["val_acc"]))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sampler": self.sampler_name, "trials": len(self._results),
            "best_trial": best.number if (best := self._best_trial()) else None,
            "repeats": self.repeats,
            "uniform_ratio": self.uniform_ratio,
            "warm_start": self.warm_start,
            "prefiltered": sum(r.prefiltered for r in self._results.values()),
            "storage": self.storage, "study": self.study.study_name,
        }
        if self.sampler_name == "nsga2":
            out["pareto_front"] = self.pareto_front()
        return out

    def save(self, folder: Path) -> list[str]:
        """Copy a SQLite study outside `folder` into it as optuna.db (SQLite's backup API, so the copy
        is consistent while the storage is open); nothing to write for in-memory or in-folder storage."""
        path = sqlite_path(self.storage)
        if path is None or path.resolve().is_relative_to(folder.resolve()):
            return []
        with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(folder / DB_FILE)) as dst:
            src.backup(dst)
        return [DB_FILE]
