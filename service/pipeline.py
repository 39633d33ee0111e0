"""Run one job: prepare (data, base model, space, budget, lookup table), search (the strategy, then the
baselines and contenders), finalize (fresh-process re-time, final fine-tune), report (artifacts and
report.json). Where timings and evaluations run is the execution backend's business (`service.execution`).

Every phase is timed and announced as an event; the CLI turns events into progress bars, the
worker persists them for the dashboard. Test data is touched only after the plan is chosen.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn

from agents import selection
from agents.base import Agent, Emit, Evaluation, ResumeMismatchError, SearchContext
from agents.bisection import BisectionAgent
from agents.budget import Budget, BudgetUnreachableError
from agents.driver import Checkpoint, EvaluateFn, SearchOutcome, run_search
from agents.registry import make_agent
from measurement.accuracy import accuracy, recalibrate_batchnorm
from measurement.latency import LatencyMeter, LatencyStats, MeterSettings, RatioStats
from measurement.lut import LatencyTable
from measurement.retime import retime_files
from measurement.training import Distillation, fit
from search_spaces.artifacts import ONNX_FILE, PLAN_FILE, WEIGHTS_FILE, export_onnx, save_pruned
from search_spaces.datasets import DataSplits, load_dataset
from search_spaces.plan import Plan
from search_spaces.preflight import checked_space
from search_spaces.space import PruningSpace
from search_spaces.sparsity import make_permanent
from search_spaces.weights import load_into, read_state_dict
from search_spaces.zoo import build_model
from service.config import Settings
from service.execution import Execution, open_execution
from service.execution.base import StopFn
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator
from service.preflight import identity_of, measured_floor, space_settings, unreachable
from service.spec import JobSpec, SpecError, TrainWeights

log = structlog.get_logger()


@dataclass
class JobResult:
    plan: Plan
    model: nn.Module
    report: dict[str, Any]
    history: list[dict[str, Any]]
    out_dir: Path


# The phases of a job in pipeline order, each with its share of an overall progress bar (the search
# dominates a job's time). The one declaration: /catalog serves it to the dashboard.
PHASES: tuple[tuple[str, int], ...] = (
    ("data", 2), ("base_model", 10), ("space", 2), ("base_latency", 3), ("lookup_table", 8), ("search", 60),
    ("baselines", 5), ("final_latency", 3), ("final_model", 5), ("artifacts", 2))
PHASE_NAMES = frozenset(name for name, _ in PHASES)


@dataclass
class Phases:
    emit: Emit
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if name not in PHASE_NAMES:
            raise ValueError(f"phase {name!r} is not declared in PHASES")
        self.emit({"type": "phase", "phase": name, "state": "start"})
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:  # the end of a failed phase says so: consumers show it as failed
            self.seconds[name] = round(time.perf_counter() - start, 3)
            self.emit({"type": "phase", "phase": name, "state": "end", "seconds": self.seconds[name],
                       "error": f"{type(exc).__name__}: {exc}"})
            raise
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.emit({"type": "phase", "phase": name, "state": "end", "seconds": self.seconds[name]})


def step_progress(emit: Emit, phase: str, every: int = 10) -> Callable[[int, int, float], None]:
    """Training-loop callback that turns every `every`-th step into a progress event."""

    def report(step: int, total: int, loss: float) -> None:
        if step == total or step % every == 0:
            emit({"type": "progress", "phase": phase, "done": step, "total": total, "loss": round(loss, 4)})
    return report


def meter_settings(spec: JobSpec) -> MeterSettings:
    d, m = spec.device, spec.measurement
    return MeterSettings(device=d.name, threads=d.threads, batch_size=d.batch_size, runtime=d.runtime,
                         warmup=m.warmup, repeats=m.repeats, ci_halfwidth=m.ci_halfwidth, confidence=m.confidence,
                         max_seconds=m.max_seconds, pin_cores=m.pin_cores,
                         cores=tuple(d.cores) if d.cores else None)


def accuracy_recipe(spec: JobSpec) -> AccuracyRecipe:
    e, f = spec.evaluation, spec.finetune
    return AccuracyRecipe(bn_recalibration=e.bn_recalibration, recalibration_batches=e.recalibration_batches,
                          batch_size=e.batch_size, val_limit=e.val_limit, short_steps=f.short_steps,
                          lr=f.effective_lr, finetune_batch_size=f.batch_size, seed=spec.seed)


def scored_on(spec: JobSpec, data: DataSplits) -> int:
    """How many validation images a plan's score counts: what tells a lead from the sampling noise."""
    return min(spec.evaluation.val_limit or len(data.val), len(data.val))


def load_data(spec: JobSpec) -> DataSplits:
    m = spec.model
    data = load_dataset(spec.dataset, input_size=m.input_size, in_channels=m.in_channels, num_classes=m.num_classes)
    for fld, have, want in (("in_channels", data.in_channels, m.in_channels),
                            ("input_size", data.input_size, m.input_size),
                            ("num_classes", data.num_classes, m.num_classes)):
        if have != want:
            raise SpecError(f"model.{fld}: dataset {data.name} has {have}, the model declares {want}")
    return data


def base_model(spec: JobSpec, data: DataSplits, factories: Mapping[str, str] | None,
               progress: Callable[[int, int, float], None] | None = None) -> nn.Module:
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, factories)
    w = spec.model.weights
    if isinstance(w, str):
        load_into(model, read_state_dict(w), w)
    elif isinstance(w, TrainWeights):
        fit(model, data.train, data.name, w.train_epochs, w.lr, w.batch_size, spec.seed, progress=progress)
    else:
        log.warning("model.random_init", note="no weights given: searching a randomly initialised model")
    return model.eval()


def resolve_budget(spec: JobSpec, space: PruningSpace, base_latency: LatencyStats | None) -> Budget:
    b = spec.budget
    base = {"flops": float(space.flops), "params": float(space.params),
            "latency_ms": base_latency.median_ms if base_latency else 0.0}[b.metric]
    if (why := unreachable(spec, space)) is not None:
        raise BudgetUnreachableError(f"budget.target: {b.metric} <= {b.limit(base):.0f} is {why}")
    return Budget(b.metric, b.limit(base), base, b.tolerance)


def build_lut(space: PruningSpace, meter: LatencyMeter, base_ms: float, cache_dir: Path, emit: Emit) -> LatencyTable:
    """Per-layer latency on the target device (cached per device setting), calibrated on the base.

    The base is timed again here, where and when the layers were, and the table is fitted to the faster
    of the two timings: a timing only errs slow. One batch-1 ResNet-20 job timed its base at 5.41 ms in
    the base-latency phase (3.0-3.4 ms in the jobs before and after it); fitted to that, the table put a
    2.4 ms constant under every plan, predicted the smallest uniform plan at 0.67x (it runs at 0.41x), and
    its Optuna search ruled out all 50 trials on the table's word."""
    table = LatencyTable(space, meter, cache_dir)
    table.build(lambda done, total: emit({"type": "progress", "phase": "lookup_table", "done": done, "total": total}))
    example = meter.example(space.identity.in_channels, space.identity.input_size)
    table.calibrate(min(base_ms, meter.measure(space.base, example, repeats=30).median_ms))
    return table


def lookup_table(meter: LatencyMeter, space: PruningSpace, base_ms: float, cache_dir: Path) -> LatencyTable:
    """`build_lut` where no event sink can follow (a Ray worker)."""
    return build_lut(space, meter, base_ms, cache_dir, lambda event: None)


MAX_BASE_CV = 0.10  # a base timing noisier than this is taken again before it sets the budget
BASE_TRIES = 3


def measure_base(meter: LatencyMeter, model: nn.Module, example: torch.Tensor, repeats: int) -> LatencyStats:
    """The base latency that sets an absolute budget: re-taken while its spread says the machine was busy."""
    tries = [meter.measure(model, example, repeats=repeats)]
    while tries[-1].cv > MAX_BASE_CV and len(tries) < BASE_TRIES:
        tries.append(meter.measure(model, example, repeats=repeats))
    return min(tries, key=lambda t: t.cv)


def baseline_cache(spec: JobSpec, space: PruningSpace, meter: LatencyMeter, cache_dir: Path) -> Path:
    """Where the baselines found for this model, device and budget are kept, so that every such job
    compares with the same plans."""
    key = {"fingerprint": space.fingerprint, "budget": spec.budget.model_dump(), "criterion": spec.criterion,
           "round_to": spec.round_to, "max_ratio": spec.max_ratio, "keep_layers": spec.keep_layers,
           "dimensions": spec.dimensions,
           "device": meter.settings.device_identity()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_dir / "baselines" / f"{digest}.json"


def find_baselines(ctx: SearchContext, evaluate: EvaluateFn, emit: Emit, skip: str, cache: Path
                   ) -> dict[str, Evaluation]:
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    found = selection.baselines(ctx, evaluate, emit, skip=skip, cached=cached)
    plans = {**cached, **{name: dict(e.candidate.ratios) for name, e in found.items() if e.meets_budget}}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(plans))
    tmp.replace(cache)
    return found


def artifact_files(space: PruningSpace, ratios: Mapping[str, float]) -> dict[str, bytes]:
    """The plan and weights a fresh process rebuilds a candidate from."""
    pruned = space.apply(ratios)
    if space.sparse:
        make_permanent(pruned)
    with tempfile.TemporaryDirectory(prefix="prunesearch-plan-") as tmp:
        save_pruned(tmp, pruned, space.plan(ratios, pruned))
        return {name: (Path(tmp) / name).read_bytes() for name in (PLAN_FILE, WEIGHTS_FILE)}


def latency_account(final: RatioStats, budget: Budget, verdict: str) -> dict[str, Any]:
    """Every latency a user sees, from one interleaved measurement: base and pruned medians with their
    spread, the ratio with its CI, the verdict, and the settings it was taken with."""
    return {"base_ms": final.base.median_ms, "pruned_ms": final.candidate.median_ms,
            "base": asdict(final.base), "pruned": asdict(final.candidate),
            "ratio": final.ratio, "ci": [final.ci_low, final.ci_high], "confidence": final.confidence,
            "pairs": final.pairs, "converged": final.converged, "target_ratio": budget.target_ratio
            if budget.measured else None, "tolerance": budget.tolerance if budget.measured else None,
            "verdict": verdict, "fresh_process": True, "settings": final.settings}


@dataclass
class Prepared:
    """What a search starts from: data, base model, its pruning space, the resolved budget and table."""

    spec: JobSpec
    data: DataSplits
    model: nn.Module
    space: PruningSpace
    example: torch.Tensor
    base_latency: LatencyStats
    timed_on: str
    budget: Budget
    lut: LatencyTable | None


@dataclass
class Searched:
    """The search and its rivals: the agent, its outcome, the baselines, the ranked contenders, and the
    uniform sweep shown beside them."""

    agent: Agent
    outcome: SearchOutcome
    baselines: dict[str, Evaluation]
    ranked: list[selection.Contender]
    sweep: list[Evaluation]


@dataclass
class Finalized:
    """The returned plan re-timed in a fresh process, and its model after the final fine-tune."""

    choice: selection.Choice
    final: RatioStats
    ratios: dict[str, float]
    pruned: nn.Module
    accuracy: dict[str, float]


def prepare(spec: JobSpec, settings: Settings, execution: Execution, phases: Phases, emit: Emit) -> Prepared:
    with phases("data"):
        data = load_data(spec)
    with phases("base_model"):
        model = base_model(spec, data, settings.model_factories, step_progress(emit, "base_model"))
    identity = identity_of(spec)
    with phases("space"):
        calib_bs = 16 if spec.criterion == "hessian" else spec.finetune.batch_size
        calib = list(data.train.batches(calib_bs, limit=spec.evaluation.calibration_batches * calib_bs))
        space = checked_space(model, identity, criterion=spec.criterion, calibration=calib, seed=spec.seed,
                              phase="space", **space_settings(spec))
    example = execution.meter.example(identity.in_channels, identity.input_size)
    with phases("base_latency"):
        base_latency, timed_on = execution.time(measure_base, model, example, max(30, spec.measurement.repeats))
    budget = resolve_budget(spec, space, base_latency)
    emit({"type": "budget", **budget.describe()})
    lut = None
    if budget.measured:
        with phases("lookup_table"):
            if timed_on == "local":  # with progress events
                lut = build_lut(space, execution.meter, base_latency.median_ms, settings.lut_cache_dir, emit)
            else:
                lut, _ = execution.time(lookup_table, space, base_latency.median_ms, settings.lut_cache_dir)
    return Prepared(spec, data, model, space, example, base_latency, timed_on, budget, lut)


def search(prep: Prepared, settings: Settings, execution: Execution, phases: Phases, emit: Emit, out: Path,
           checkpoint: Callable[[Checkpoint], None] | None, resume: Checkpoint | None) -> Searched:
    """The strategy's search (resumed from a checkpoint of the same base model), then the baselines and the
    contenders the returned plan is chosen from."""
    spec, space, budget = prep.spec, prep.space, prep.budget
    ctx = SearchContext(space=space, budget=budget, seed=spec.seed, emit=emit, lut=prep.lut, workdir=out)
    params = spec.strategy.model_dump(exclude={"name"})
    agent = make_agent(spec.strategy.name, ctx, params)
    if resume is not None and resume.get("fingerprint") != space.fingerprint:
        emit({"type": "resume_skipped", "reason": "the checkpoint was taken on another base model"})
        resume = None

    def save_state(state: Checkpoint) -> None:
        if checkpoint is not None:
            checkpoint({**state, "fingerprint": space.fingerprint})

    with phases("search"):
        evaluator = execution.evaluator(space, prep.data, budget, accuracy_recipe(spec), prep.lut)
        try:
            outcome = run_search(agent, evaluator, emit, checkpoint=save_state, resume=resume)
        except ResumeMismatchError as exc:  # the replay diverged: start over rather than guess
            emit({"type": "resume_skipped", "reason": str(exc)})
            agent = make_agent(spec.strategy.name, ctx, params)
            outcome = run_search(agent, evaluator, emit, checkpoint=save_state)
        with phases("baselines"):
            found = find_baselines(ctx, evaluator, emit, agent.name,
                                   baseline_cache(spec, space, execution.meter, settings.lut_cache_dir))
            rivals = {} if isinstance(agent, BisectionAgent) else found  # a baseline returns its own plan
            ranked = selection.contenders(outcome.history, outcome.best, rivals, evaluator, budget,
                                          network=space.kept_for)
            ranked = selection.refine(ranked, evaluator, spec.evaluation.selection_steps,
                                      samples=scored_on(spec, prep.data))
            sweep = selection.uniform_sweep(ctx, evaluator, emit, spec.evaluation.uniform_sweep)
    execution.close()  # the accuracy actors are done; timings go on
    return Searched(agent, outcome, found, ranked, sweep)


def finalize(prep: Prepared, found: Searched, settings: Settings, execution: Execution, phases: Phases,
             emit: Emit) -> Finalized:
    """The best contender that holds its budget when re-timed in a fresh process, then its model: BN
    recalibrated, scored, fine-tuned (distilled from the base) and scored again."""
    spec, space, data = prep.spec, prep.space, prep.data
    max_seconds = max(2 * spec.measurement.max_seconds, 10.0)

    def retime(e: Evaluation) -> RatioStats:
        stats, _ = execution.time(retime_files, artifact_files(space, e.candidate.ratios),
                                  settings.model_factories, max_seconds)
        return stats

    with phases("final_latency"):
        # tightened and widened plans are scored here, in this process: the search's evaluators are closed
        scorer = LocalEvaluator(space, data, prep.budget, accuracy_recipe(spec), None, prep.lut,
                                should_stop=execution.should_stop)
        ctx = SearchContext(space=space, budget=prep.budget, seed=spec.seed, lut=prep.lut)

        origins: dict[tuple[tuple[str, float], ...], dict[str, bytes]] = {}  # built once for every try

        def against(plan: Mapping[str, float], reference: Mapping[str, float]) -> RatioStats:
            """In a fresh process too: the long-lived timing process called tightened plans 1.7% slower against
            their origins, on average, than fresh timings did (bench/results/tighten_fidelity_mobilenetv2_b32.md)."""
            key = tuple(sorted(reference.items()))
            if key not in origins:
                origins[key] = artifact_files(space, reference)
            stats, _ = execution.time(retime_files, artifact_files(space, plan), settings.model_factories,
                                      max_seconds, origins[key])
            return stats

        rescaler = selection.Rescaler(ctx, scorer, spec.evaluation.selection_steps, against)
        if not found.ranked and prep.budget.measured:
            raise BudgetUnreachableError(measured_floor(spec, space, [
                e.latency_ratio for e in found.outcome.history
                if e.latency_source == "measured" and e.latency_ratio is not None]))
        choice = selection.choose(found.ranked, prep.budget, retime, emit, rescaler, samples=scored_on(spec, data))
        final = choice.retimed if isinstance(choice.retimed, RatioStats) else retime(choice.contender.evaluation)
    ratios = dict(choice.contender.evaluation.candidate.ratios)
    with phases("final_model"):
        pruned, scores = final_model(space, ratios, prep.model, data, spec, spec.finetune.final_epochs,
                                     step_progress(emit, "final_model"))
        if space.sparse:
            make_permanent(pruned)  # fold the masks in: the saved weights hold the zeros
        pruned.eval()
    return Finalized(choice, final, ratios, pruned, scores)


def final_model(space: PruningSpace, ratios: Mapping[str, float], base: nn.Module, data: DataSplits,
                spec: JobSpec, epochs: float, progress: Callable[[int, int, float], None] | None = None
                ) -> tuple[nn.Module, dict[str, float]]:
    """The model a job returns for a plan, with its scores: BN recalibrated, scored, fine-tuned for `epochs`
    (cosine LR, distilled from the base if the spec asks) and scored again. The benches that fine-tune plans
    again (`finetune_length`, `depth_ceiling`) call it too, so their plans get exactly the job's treatment."""
    recipe = accuracy_recipe(spec)
    pruned = space.apply(ratios)
    if recipe.bn_recalibration:
        recalibrate_batchnorm(pruned, data.train, recipe.recalibration_batches, recipe.finetune_batch_size, spec.seed)
    scores = {"val_acc": accuracy(pruned, data.val, recipe.batch_size),
              "test_acc": accuracy(pruned, data.test, recipe.batch_size)}
    if epochs > 0:
        ft = spec.finetune
        teacher = Distillation(base, ft.distill_temperature, ft.distill_alpha) if ft.distill else None
        fit(pruned, data.train, data.name, epochs, ft.effective_lr, ft.batch_size, spec.seed, schedule="cosine",
            progress=progress, distill=teacher)
        scores |= {"val_acc_ft": accuracy(pruned, data.val, recipe.batch_size),
                   "test_acc_ft": accuracy(pruned, data.test, recipe.batch_size)}
    return pruned, scores


def ranking(ranked: Sequence[selection.Contender]) -> list[dict[str, Any]]:
    """The leading contenders in the order the final choice tried them: why a job returned a baseline, or
    another plan than its agent's own choice, shows in their scores before and after `refine`."""
    return [{"source": c.source, "candidate": c.evaluation.candidate.id, "val_acc": c.evaluation.val_acc,
             "val_acc_common_recipe": c.first_score, "search_latency_ratio": c.evaluation.latency_ratio}
            for c in ranked[:selection.MAX_RETIMES]]


def build_report(prep: Prepared, found: Searched, fin: Finalized, phases: Phases, files: dict[str, Any],
                 meter: LatencyMeter) -> dict[str, Any]:
    """report.json: the one account of the job (README, "run writes into its folder")."""
    spec, space, budget, lut, final = prep.spec, prep.space, prep.budget, prep.lut, fin.final
    recipe, ft = accuracy_recipe(spec), spec.finetune
    chosen, ratios = fin.choice.contender.evaluation, fin.ratios
    flops, params_count = space.count(fin.pruned)
    base_acc = {"val_acc": accuracy(prep.model, prep.data.val, recipe.batch_size),
                "test_acc": accuracy(prep.model, prep.data.test, recipe.batch_size)}
    verdict = budget.verdict(flops, params_count, final.ci_high, final.ratio)
    outcome = found.outcome
    return {
        "job": spec.name, "strategy": found.agent.name, "criterion": spec.criterion,
        "budget": budget.describe(),
        "budget_met": verdict == "met",
        "budget_verdict": verdict,
        "selected": {"source": fin.choice.contender.source, "candidate_id": chosen.candidate.id,
                     "val_acc_search": chosen.val_acc, "search_latency_ratio": chosen.latency_ratio,
                     "val_acc_common_recipe": fin.choice.contender.first_score,
                     "selection_steps": spec.evaluation.selection_steps,
                     "agent_choice": outcome.best.candidate.id if outcome.best else None,
                     "contenders": len(found.ranked), "ranking": ranking(found.ranked),
                     "retimes": fin.choice.attempts, "rescaled": fin.choice.rescaled},
        "latency": latency_account(final, budget, verdict),
        "base": {**base_acc, "flops": space.flops, "params": space.params, "latency": asdict(final.base),
                 "latency_budget_phase": asdict(prep.base_latency)},
        "pruned": {**fin.accuracy, "flops": flops, "params": params_count,
                   "latency_ms": final.candidate.median_ms, "latency": asdict(final.candidate)},
        "teacher": {"test_acc": base_acc["test_acc"], "distilled": bool(ft.final_epochs > 0 and ft.distill),
                    "temperature": ft.distill_temperature, "alpha": ft.distill_alpha},
        "ratios": {"flops": flops / space.flops, "params": params_count / space.params,
                   "latency": final.ratio, "latency_ci": [final.ci_low, final.ci_high],
                   "latency_converged": final.converged, "latency_pairs": final.pairs},
        "measurement": {**meter.settings.describe(), "timed_on": prep.timed_on, "final": "fresh process"},
        "search": {"evaluations": len(outcome.history), "seconds": round(outcome.seconds, 3),
                   "backend": spec.execution.backend, "agent_files": files["agent"]},
        "lookup_table": ({"predicted_latency_ratio": (predicted := lut.ratio(space.kept_for(ratios))),
                          "raw_predicted_latency_ratio": lut.raw_ratio(space.kept_for(ratios)),
                          "error_vs_measured": predicted / final.ratio - 1,
                          "plan_calibration": {"scale": lut.scale, "pairs": len(lut.observed)},
                          "overhead_ms": lut.overhead_ms, "layer_scale": lut.layer_scale,
                          "layers_ms": {"base": lut.breakdown(space.kept_for({})),
                                        "pruned": lut.breakdown(space.kept_for(ratios))}}
                         if lut is not None else None),
        "baselines": [{"name": name, "knob": e.candidate.tag.get("knob"), **e.record()}
                      for name, e in found.baselines.items()],
        "uniform_sweep": [{"ratio": e.candidate.tag["sweep"], **e.record()} for e in found.sweep],
        "phases_seconds": phases.seconds,
        "data": prep.data.sizes(),
        "onnx": files["onnx"] or "exported",
        "size_bytes": files["sizes"],
        "dimensions": {"kinds": list(space.kinds), **{k: v for r in space.rules for k, v in r.report(space).items()}},
    }


def run_job(spec: JobSpec, out_dir: str | Path, emit: Emit | None = None, settings: Settings | None = None,
            checkpoint: Callable[[Checkpoint], None] | None = None, resume: Checkpoint | None = None,
            should_stop: StopFn | None = None) -> JobResult:
    """Run a job end to end: prepare, search, finalize, report. `checkpoint` receives the search state after
    every batch; `resume` continues a search from such a state (ignored, with an event, if the base model
    differs); `should_stop` is polled by running work, which then raises `EvaluationCancelled`."""
    emit = emit or (lambda event: None)
    settings = settings or Settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(spec.model_dump_json(indent=2) + "\n")
    phases = Phases(emit)
    torch.set_num_threads(os.cpu_count() or 1)
    meter = LatencyMeter(meter_settings(spec))
    with open_execution(spec, settings, meter, should_stop) as execution:
        prep = prepare(spec, settings, execution, phases, emit)
        found = search(prep, settings, execution, phases, emit, out, checkpoint, resume)
        fin = finalize(prep, found, settings, execution, phases, emit)
    plan = prep.space.plan(fin.ratios, fin.pruned)
    with phases("artifacts"):
        files = {"sizes": save_pruned(out, fin.pruned, plan),
                 "onnx": export_onnx(fin.pruned, prep.example[:1], out / ONNX_FILE),
                 "agent": found.agent.save(out)}
        (out / "agent.json").write_text(json.dumps(found.agent.summary(), indent=1, default=float) + "\n")
    report = build_report(prep, found, fin, phases, files, meter)
    history = [e.record() for e in found.outcome.history]
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    emit({"type": "done", "report": report})
    return JobResult(plan, fin.pruned, report, history, out)
