"""Progress bars for long CLI phases and structured logging set-up."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from tqdm import tqdm

# Libraries whose INFO lines are noise to a user: httpx/httpcore log every client request, alembic
# announces its plugins on every `serve`. Their warnings still show.
QUIET_LOGGERS = ("httpx", "httpcore", "alembic")


class _CurrentStderr:
    """Whatever `sys.stderr` is at write time: a logger configured once must survive stream swaps
    (pytest's capture, daemonisation) instead of writing to a stream someone has since closed.

    Complete lines go out through tqdm's `external_write_mode`, which clears any live progress bar
    first and redraws it after: a log line never lands glued onto a bar. A line is buffered until its
    newline because `print` (structlog's PrintLogger) writes the message and the newline separately."""

    def __init__(self) -> None:
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            lines, _, self._pending = self._pending.rpartition("\n")
            with tqdm.external_write_mode(file=sys.stderr):
                sys.stderr.write(lines + "\n")
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", json_logs: bool = False) -> None:
    """Structured logs to stderr: key=value for people, JSON lines for machines. The standard library's
    loggers (Ray, uvicorn, alembic) go through the same bar-aware stream."""
    logging.basicConfig(level=level, stream=_CurrentStderr(), format="%(message)s")
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    for name in QUIET_LOGGERS:  # at DEBUG, show them all
        logging.getLogger(name).setLevel(logging.WARNING if numeric >= logging.INFO else numeric)
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
    )


MIN_RATE_WINDOW_S = 1.0


class EventBar(tqdm):
    """A tqdm bar whose rate and ETA come from the events' own clock when they carry one (`elapsed_s` of
    evaluations), and are withheld until a second has passed otherwise. Events arrive in bursts: a batch
    of results at once, or a whole stream replayed by `watch`, which tqdm's wall-clock rate read as
    1,103,764 it/s."""

    event_elapsed: float | None = None

    @property
    def format_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = super().format_dict
        if self.event_elapsed is not None:
            d["elapsed"] = self.event_elapsed
            d["rate"] = self.n / self.event_elapsed if self.event_elapsed > 0 and self.n else None
        elif d["elapsed"] < MIN_RATE_WINDOW_S:
            d["rate"] = None
        return d


def resource_ratio(event: dict[str, Any], budget: dict[str, Any] | None) -> float | None:
    """The budgeted resource of an evaluated plan as a fraction of the base model's."""
    if budget is None:
        return None
    metric = budget.get("metric")
    if metric == "latency_ms":
        value = event.get("latency_ratio")
        return float(value) if isinstance(value, int | float) else None
    cost, base = event.get(str(metric)), budget.get("base")
    if isinstance(cost, int | float) and isinstance(base, int | float) and base > 0:
        return float(cost) / float(base)
    return None


class EventBars:
    """Render the pipeline's event stream as log lines and one tqdm bar per phase with a known total.

    The search bar's `best` is the best accuracy within the budget when the strategy scores accuracy,
    else the resource ratio of the largest plan that met the budget (bisection strategies time plans but
    score accuracy only on the final one), so a met budget never reads `best=None`."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, EventBar] = {}
        self.budget: dict[str, Any] | None = None
        self.best_met: float | None = None
        self.met = 0
        self.table_only = 0  # evaluations the lookup table ruled out: costed, never scored or timed
        self.log = structlog.get_logger()

    def _bar(self, phase: str, total: int) -> EventBar:
        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = EventBar(total=total, desc=phase, leave=False, file=sys.stderr,
                                              dynamic_ncols=True, mininterval=0.5)
        elif bar.total != total:
            bar.total = total
        return bar

    def postfix(self, event: dict[str, Any]) -> dict[str, str]:
        """`best` and `met` for the search bar, updated from one evaluation event, and how many of the
        evaluations so far the lookup table ruled out (they count towards the bar but cost no scoring)."""
        if (event.get("tag") or {}).get("prefiltered"):
            self.table_only += 1
        if event.get("meets_budget"):
            self.met += 1
            ratio = resource_ratio(event, self.budget)
            if ratio is not None and (self.best_met is None or ratio > self.best_met):
                self.best_met = ratio
        best_acc = event.get("best_val_acc")
        if isinstance(best_acc, int | float):
            best = f"acc {best_acc:.4f}"
        elif self.best_met is not None:
            best = f"{self.budget['metric'] if self.budget else 'cost'} x{self.best_met:.3f}"
        else:
            best = "none within budget yet"
        return {"best": best, "met": str(self.met), **({"table_only": str(self.table_only)} if self.table_only else {})}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "phase":
            phase = str(event["phase"])
            if event["state"] == "start":
                return
            bar = self.bars.pop(phase, None)
            if bar is not None:
                bar.close()
            if event.get("error") is not None:  # the pipeline marks a phase that raised
                self.log.error("phase.failed", phase=phase, seconds=event.get("seconds"), error=event["error"])
            else:
                self.log.info("phase.done", phase=phase, seconds=event.get("seconds"))
        elif kind in ("progress", "evaluation"):
            phase = str(event.get("phase", "search"))
            total = event.get("total", event.get("planned"))
            extra = self.postfix(event) if kind == "evaluation" else None
            if self.enabled and isinstance(total, int):
                bar = self._bar(phase, total)
                if extra is not None:
                    bar.set_postfix(extra, refresh=False)
                if isinstance(event.get("elapsed_s"), int | float):
                    bar.event_elapsed = float(event["elapsed_s"])
                bar.update(int(event["done"]) - bar.n)  # tqdm prints at most every mininterval
        elif kind == "budget":
            self.budget = {k: v for k, v in event.items() if k != "type"}
            self.log.info("budget", **self.budget)
        elif kind == "failed":
            self.log.error("job.failed", error=event.get("error"))
