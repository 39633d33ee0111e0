"""`prunesearch` command line: train a baseline, run a job in-process, evaluate an artifact folder,
and talk to a job server (serve, upload, submit, watch, ...).

Exit codes: 0 success; 1 a failure at run time (or a job that did not succeed); 2 a usage error, with a
message naming the bad argument or field (also a 4xx answer from the server); 3 the server could not be
reached at all (refused, DNS, timeout); 4 `run` finished but the returned model misses its latency budget
beyond the tolerance when re-timed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog
import torch

from agents.budget import BudgetUnreachableError
from measurement.runtimes import RuntimeUnavailableError
from search_spaces.criteria import UnknownCriterionError
from search_spaces.datasets import DatasetError, available_datasets, load_dataset
from search_spaces.layers import SpaceError
from search_spaces.plan import PlanMismatchError
from search_spaces.weights import WeightsError, save_weights
from search_spaces.zoo import UnknownModelError, available_models, build_model
from service.client import ApiError, ServerUnreachableError, add_connection_options
from service.config import RayUnavailableError, Settings
from service.progress import EventBars, configure_logging
from service.spec import DatasetSpec, JobSpec, ModelSpec, SpecError

log = structlog.get_logger()

EXIT_BUDGET_MISSED = 4  # `run` finished, but the returned model misses its latency budget beyond the tolerance
USAGE_ERRORS = (SpecError, UnknownModelError, DatasetError, WeightsError, SpaceError, PlanMismatchError,
                UnknownCriterionError, BudgetUnreachableError, RuntimeUnavailableError)
EXIT_UNREACHABLE = 3  # no answer from the server at all: distinct from a refusal (2) and a failure (1)
TRAIN_VAL_FRACTION = 0.1  # `train` without --val-size holds out this much of the training data


def cmd_train(args: argparse.Namespace) -> int:
    from measurement.accuracy import accuracy
    from measurement.training import fit

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    dataset = DatasetSpec(name=args.dataset, root=args.root, val_size=args.val_size or 1, seed=args.seed)
    data = load_dataset(dataset, val_fraction=TRAIN_VAL_FRACTION if args.val_size is None else None)
    dataset = dataset.model_copy(update={"val_size": len(data.val)})  # metadata records what was held out
    spec = ModelSpec(arch=args.model, num_classes=data.num_classes, in_channels=data.in_channels,
                     input_size=data.input_size)
    model = build_model(spec)
    log.info("train.start", arch=spec.arch, dataset=dataset.name, epochs=args.epochs, **data.sizes())
    start = time.perf_counter()
    from service.pipeline import step_progress

    bars = EventBars()
    fit(model, data.train, dataset.name, args.epochs, args.lr, args.batch_size, args.seed,
        progress=step_progress(bars, f"train {spec.arch}"))
    bars({"type": "phase", "phase": f"train {spec.arch}", "state": "end"})
    meta = {
        "model": spec.model_dump(exclude={"weights"}),
        "dataset": dataset.model_dump(),
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
        "val_accuracy": accuracy(model, data.val), "test_accuracy": accuracy(model, data.test),
        "train_seconds": round(time.perf_counter() - start, 1),
        "command": shlex.join(["prunesearch", *sys.argv[1:]]),
    }
    out = Path(args.out)
    save_weights(model, out / "model.safetensors", {"arch": spec.arch})
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("train.done", val_accuracy=meta["val_accuracy"], test_accuracy=meta["test_accuracy"], out=str(out))
    print(json.dumps({k: meta[k] for k in ("val_accuracy", "test_accuracy", "train_seconds")}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from service.pipeline import run_job
    from service.spec import load_spec, parse_spec

    spec = load_spec(args.job)
    if args.strategy:
        data = spec.model_dump()
        data["strategy"] = {"name": args.strategy}
        spec = parse_spec(data)
    settings = Settings(**({"ray_address": args.ray_address} if args.ray_address else {}))
    if args.local:
        spec = spec.model_copy(update={"execution": spec.execution.model_copy(update={"backend": "local"})})
    from service.preflight import preflight_spec

    preflight_spec(spec, settings.model_factories)  # a spec the model cannot honour exits 2 before any training
    log.info("job.start", job=args.job, strategy=spec.strategy.name, budget=spec.budget.model_dump(), out=args.out,
             backend=spec.execution.backend)
    result = run_job(spec, args.out, emit=EventBars(enabled=not args.quiet), settings=settings)
    print(summary_table(result.report))
    print(f"artifacts: {result.out_dir}")
    return EXIT_BUDGET_MISSED if result.report.get("budget_verdict") == "missed" else 0


VERDICTS = {"met": "met", "within_tolerance": "met within tolerance (median over the target by less than the "
            "tolerance)", "missed": "MISSED"}


def summary_table(report: dict[str, Any]) -> str:
    """Base vs pruned, one metric a row; the latency row and verdict come from one interleaved measurement."""
    base, pruned, ratios = report["base"], report["pruned"], report["ratios"]
    rows = [("val accuracy", f"{base['val_acc']:.4f}", f"{pruned['val_acc']:.4f}", ""),
            ("test accuracy", f"{base['test_acc']:.4f}", f"{pruned['test_acc']:.4f}", "")]
    if "test_acc_ft" in pruned:
        rows.append(("test acc (fine-tuned)", f"{base['test_acc']:.4f}", f"{pruned['test_acc_ft']:.4f}", ""))
    rows += [("MACs", f"{base['flops']:,}", f"{pruned['flops']:,}", f"{ratios['flops']:.3f}"),
             ("params", f"{base['params']:,}", f"{pruned['params']:,}", f"{ratios['params']:.3f}")]
    lat = report.get("latency")
    if lat:
        rows.append(("latency ms (median, p10-p90)",
                     f"{lat['base_ms']:.3f} ({lat['base']['p10_ms']:.3f}-{lat['base']['p90_ms']:.3f})",
                     f"{lat['pruned_ms']:.3f} ({lat['pruned']['p10_ms']:.3f}-{lat['pruned']['p90_ms']:.3f})",
                     f"{lat['ratio']:.3f} [{lat['ci'][0]:.3f}, {lat['ci'][1]:.3f}]"))
    widths = [max(len(r[i]) for r in [*rows, ("metric", "base", "pruned", "ratio")]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("metric", "base", "pruned", "ratio"), widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if lat:
        lines.append(f"latency: {lat['pairs']} interleaved pairs in a fresh process; the ratio is the median of the "
                     f"per-pair ratios, {int(lat['confidence'] * 100)}% CI in brackets")
    b = report["budget"]
    verdict = report.get("budget_verdict", "met" if report["budget_met"] else "missed")
    limit = f"<= {b['target_ratio']:.3f} x base"
    if b["metric"] == "latency_ms":
        limit += f" (tolerance {b['tolerance']:.0%} on the CI's upper end)"
    lines.append(f"budget {b['metric']} {limit}: {VERDICTS.get(verdict, verdict)}")
    if sel := report.get("selected"):
        lines.append(f"returned plan: from {sel['source']} (best of {sel['contenders']} measured plans by "
                     "validation accuracy)")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Re-check an artifact folder on this machine: accuracy, and latency against the base re-timed here."""
    from agents.budget import Budget
    from measurement.accuracy import accuracy
    from measurement.retime import compare_pruned
    from search_spaces.artifacts import load_pruned
    from service.pipeline import load_data, meter_settings
    from service.spec import load_spec

    folder = Path(args.dir)
    spec = load_spec(folder / "job.json")
    factories = Settings().model_factories
    model, plan = load_pruned(folder, factories)
    data = load_data(spec)
    settings = meter_settings(spec)
    stats = compare_pruned(model, plan, settings, factories, max_seconds=args.max_seconds)
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").is_file() else {}
    budget_info = report.get("budget", {})
    verdict = None
    if budget_info.get("metric") == "latency_ms":
        budget = Budget("latency_ms", float(budget_info["limit"]), float(budget_info["base"]),
                        float(budget_info.get("tolerance", 0.03)))
        verdict = budget.verdict(plan.flops_after, plan.params_after, stats.ci_high, stats.ratio)
    pruned = report.get("pruned", {})
    out = {
        "dir": str(folder), "fingerprint": plan.fingerprint,
        # the saved weights are the fine-tuned ones when the job fine-tuned: name them as report.json does
        ("test_acc_ft" if "test_acc_ft" in pruned else "test_acc"): accuracy(model, data.test),
        ("val_acc_ft" if "val_acc_ft" in pruned else "val_acc"): accuracy(model, data.val),
        "latency": {"base_ms": stats.base.median_ms, "pruned_ms": stats.candidate.median_ms, "ratio": stats.ratio,
                    "ci": [stats.ci_low, stats.ci_high], "pairs": stats.pairs, "converged": stats.converged,
                    "base": asdict(stats.base), "pruned": asdict(stats.candidate)},
        "budget_verdict_here": verdict,
        "flops": plan.flops_after, "params": plan.params_after,
        "reported": {"test_acc_ft": pruned.get("test_acc_ft"), "test_acc": pruned.get("test_acc"),
                     "latency_ratio": report.get("ratios", {}).get("latency"),
                     "budget_verdict": report.get("budget_verdict")},
        "measurement": settings.describe(),
    }
    print(json.dumps(out, indent=2))
    return 0


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api.app import create_app

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "database_url": args.db,
                                   "ray_address": args.ray_address, "artifact_dir": args.artifact_dir}.items()
                 if v is not None}
    settings = Settings(**overrides)
    if not settings.tokens and settings.host not in LOOPBACK:
        raise SpecError(f"--host {settings.host}: refusing to serve beyond loopback without tokens "
                        "(set PRUNESEARCH_TOKENS)")
    from service.store import StoreUnavailableError

    try:
        app = create_app(settings)  # connects to the database and migrates it: fail here, before binding
    except StoreUnavailableError as exc:
        print(f"prunesearch serve: error: {exc}", file=sys.stderr)
        return 1
    print(f"api: http://{settings.host}:{settings.port}/api/v1  docs: http://{settings.host}:{settings.port}/docs",
          flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from service.client import Client

    return Client(args.server, args.token)


def warn_about(spec: JobSpec) -> None:
    """Loud, structured warnings for a spec that is valid but likely not what the user meant."""
    if spec.model.weights is None:
        log.warning("model.random_init", arch=spec.model.arch,
                    note="model.weights is null: the search prunes a randomly initialised model, so its accuracy "
                         "figures mean nothing; give a checkpoint (or upload:<id>) or {train_epochs: N}")


def cmd_submit(args: argparse.Namespace) -> int:
    from service.spec import load_spec

    spec = load_spec(args.job)
    warn_about(spec)
    job = _client(args).submit(spec.model_dump(mode="json", exclude_none=True))
    print(json.dumps({"id": job["id"], "status": job["status"]}))
    if args.wait:
        return _watch(args, job["id"], summary=True)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise SpecError(f"{args.file}: no such file")
    answer = _client(args).upload(path)
    log.info("weights.uploaded", file=str(path), id=answer["id"], size=answer["size"], tensors=answer["tensors"])
    print(answer["reference"])  # bare, for `model.weights` or a shell variable
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).job(args.id), indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    page = _client(args).jobs(args.status, args.limit)
    for job in page["items"]:
        progress = job.get("progress") or {}
        print(f"{job['id']}  {job['status']:<9}  {job.get('name') or '':<30}  {progress.get('phase', '')}")
    print(f"{len(page['items'])} of {page['total']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    print(json.dumps({k: v for k, v in _client(args).cancel(args.id).items() if k in ("id", "status")}))
    return 0


def result_summary(result: dict[str, Any]) -> str:
    """What a finished job bought, from its result summary: accuracy before and after fine-tuning,
    the measured speed-up and the budget verdict."""
    base, pruned, ratios = result.get("base", {}), result.get("pruned", {}), result.get("ratios", {})

    def acc(split: str) -> str:
        line = f"{split} accuracy: base {base.get(f'{split}_acc', float('nan')):.4f}, " \
               f"pruned {pruned.get(f'{split}_acc', float('nan')):.4f}"
        if f"{split}_acc_ft" in pruned:
            line += f", after fine-tune {pruned[f'{split}_acc_ft']:.4f}"
        return line

    lines = [acc("val"), acc("test")]
    if ratios.get("latency"):
        ci = ratios.get("latency_ci") or [float("nan")] * 2
        lines.append(f"speed-up: {1 / ratios['latency']:.2f}x (latency ratio {ratios['latency']:.3f}, "
                     f"CI [{ci[0]:.3f}, {ci[1]:.3f}])")
    if "flops" in ratios:
        lines.append(f"MACs {ratios['flops']:.3f} x base, params {ratios.get('params', float('nan')):.3f} x base")
    budget = result.get("budget") or {}
    if budget:
        verdict = "met" if result.get("budget_met") else "NOT met"
        target = budget.get("target_ratio", float("nan"))
        lines.append(f"budget {budget.get('metric')} <= {target:.3f} x base: {verdict}")
    return "\n".join(lines)


def _watch(args: argparse.Namespace, job_id: str, summary: bool = False) -> int:
    client = _client(args)
    bars = EventBars(enabled=not getattr(args, "quiet", False))
    status = "unknown"
    for _, kind, data in client.events(job_id):
        if kind == "end":
            status = data["status"]
            break
        bars(data)
    job = client.job(job_id)
    if summary and job.get("result"):
        print(result_summary(job["result"]))
    print(json.dumps({"id": job_id, "status": status, "error": job.get("error")}))
    return 0 if status == "succeeded" else 1


def cmd_watch(args: argparse.Namespace) -> int:
    return _watch(args, args.id, summary=True)


def cmd_fetch(args: argparse.Namespace) -> int:
    names = _client(args).fetch(args.id, Path(args.out))
    print(json.dumps({"out": args.out, "files": names}))
    return 0


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one (not "default: None" on required or optional-unset options)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunesearch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"prunesearch {importlib.metadata.version('prunesearch')}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    parser.add_argument("--json-logs", action="store_true", help="log JSON lines instead of key=value")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a zoo model and write safetensors + metadata.json",
                           formatter_class=DefaultsShown)
    models, datasets = available_models(), available_datasets()
    train.add_argument("--model", required=True, type=_one_of(models, "model"), metavar="MODEL",
                       help=f"one of: {', '.join(models)}")
    train.add_argument("--dataset", required=True, type=_one_of(datasets, "dataset"), metavar="DATASET",
                       help=f"one of: {', '.join(datasets)}")
    train.add_argument("--root", default=None, help="dataset root folder (fashion-mnist, cifar10)")
    train.add_argument("--epochs", type=float, default=15, help="training epochs (fractions allowed)")
    train.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    train.add_argument("--batch-size", type=int, default=128, help="training batch size")
    train.add_argument("--val-size", type=int, default=None,
                       help=f"samples held out of train for validation "
                            f"(default: {TRAIN_VAL_FRACTION * 100:.0f}%% of train)")
    train.add_argument("--seed", type=int, default=0, help="seeds the split, the init and the data order")
    train.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    train.add_argument("--out", required=True, help="folder for model.safetensors and metadata.json")
    train.set_defaults(func=cmd_train)

    run = sub.add_parser("run", help="run one job in-process (no server) and write its artifacts")
    run.add_argument("job", help="job file (YAML or JSON)")
    run.add_argument("--out", required=True, help="artifact folder")
    run.add_argument("--strategy", default=None, help="override the job's strategy (its parameters take defaults)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--ray-address", default=None, help="join this Ray cluster (default: PRUNESEARCH_RAY_ADDRESS, "
                                                         "else an embedded one)")
    run.add_argument("--local", action="store_true", help="evaluate in-process instead of on Ray")
    run.set_defaults(func=cmd_run)

    evaluate = sub.add_parser("evaluate", help="rebuild a pruned model from DIR and re-measure it here")
    evaluate.add_argument("dir")
    evaluate.add_argument("--max-seconds", type=float, default=30.0,
                          help="time cap of the interleaved base/pruned measurement")
    evaluate.set_defaults(func=cmd_evaluate)

    serve = sub.add_parser("serve", help="run the job server (REST API, dashboard, job runner)",
                           description="Every option falls back to its PRUNESEARCH_* variable, then to the "
                                       "default shown. Tokens, limits and dataset roots are set only by variable "
                                       "(see README, operator settings).")

    def setting(flag: str, field: str, text: str, **kwargs: Any) -> None:
        default = Settings.model_fields[field].default
        serve.add_argument(flag, default=None, help=f"{text} (env PRUNESEARCH_{field.upper()}; "
                                                    f"default: {default if default is not None else 'unset'})",
                           **kwargs)

    setting("--host", "host", "interface to bind; beyond loopback only with PRUNESEARCH_TOKENS set")
    setting("--port", "port", "TCP port", type=int)
    setting("--db", "database_url", "SQLAlchemy database URL (sqlite:///… or postgresql://…)")
    setting("--ray-address", "ray_address", "Ray cluster to join (auto, host:port, ray://…); unset: an embedded one")
    setting("--artifact-dir", "artifact_dir", "folder for job artifacts and uploaded weights")
    serve.set_defaults(func=cmd_serve)

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        return add_connection_options(sub.add_parser(name, help=help_text))

    submit = client_parser("submit", "submit a job file to the server")
    submit.add_argument("job", help="job file (YAML or JSON)")
    submit.add_argument("--wait", action="store_true", help="follow progress until the job ends, then print its "
                                                            "accuracy, speed-up and budget verdict")
    submit.add_argument("--quiet", action="store_true", help="no progress bars")
    submit.set_defaults(func=cmd_submit)
    upload = client_parser("upload", "upload a safetensors weights file; prints its upload:<id> reference")
    upload.add_argument("file", help="a .safetensors file (pickles are refused by the server)")
    upload.set_defaults(func=cmd_upload)
    for name, func, help_text in (("status", cmd_status, "show a job"), ("watch", cmd_watch, "follow a job live"),
                                  ("cancel", cmd_cancel, "cancel a job")):
        p = client_parser(name, help_text)
        p.add_argument("id")
        p.set_defaults(func=func)
    listing = client_parser("list", "list jobs")
    listing.add_argument("--status", default=None)
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_list)
    fetch = client_parser("fetch", "download a job's artifacts")
    fetch.add_argument("id")
    fetch.add_argument("--out", required=True)
    fetch.set_defaults(func=cmd_fetch)
    from service.schedules.cli import add_commands as add_schedule_commands

    add_schedule_commands(sub)  # `schedule add|list|runs|pause|resume|run|rm` and `scheduler`
    return parser


def _one_of(choices: Sequence[str], what: str) -> Any:
    """An argparse type that accepts a catalog name or a `prefix:<name>` form the catalog lists."""
    prefixes = tuple(c.split(":", 1)[0] + ":" for c in choices if c.endswith(">"))

    def check(value: str) -> str:
        if value in choices or (value.startswith(prefixes) and value.split(":", 1)[1]):
            return value
        raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; choose from: {', '.join(choices)}")
    return check


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.json_logs)
    try:
        return int(args.func(args))
    except USAGE_ERRORS as exc:
        print(f"prunesearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RayUnavailableError as exc:
        print(f"prunesearch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"prunesearch {args.command}: error: {exc}", file=sys.stderr)
        return 2 if 400 <= exc.status < 500 else 1
    except ServerUnreachableError as exc:
        print(f"prunesearch {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
