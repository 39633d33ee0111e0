"""Progress bars for long CLI phases and structured logging set-up."""

from __future__ import annotations

import logging
import sys

import structlog
from tqdm import tqdm


class _CurrentStderr:
    """Whatever `sys.stderr` is at write time: a logger configured once must survive stream swaps
    (pytest's capture, daemonisation) instead of writing to a stream someone has since closed."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", json_logs: bool = False) -> None:
    """Structured logs to stderr: key=value for people, JSON lines for machines."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
    )


class EventBars:
    """Render the pipeline's event stream as log lines and one tqdm bar per phase with a known total."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, tqdm] = {}
        self.log = structlog.get_logger()

    def __call__(self, event: dict[str, object]) -> None:
        kind = event.get("type")
        if kind == "phase":
            if event["state"] == "end":
                bar = self.bars.pop(str(event["phase"]), None)
                if bar is not None:
                    bar.close()
                self.log.info("phase.done", phase=event["phase"], seconds=event.get("seconds"))
        elif kind in ("progress", "evaluation"):
            phase = str(event.get("phase", "search"))
            total = event.get("total", event.get("planned"))
            if self.enabled and isinstance(total, int):
                bar = self.bars.get(phase)
                if bar is None:
                    bar = self.bars[phase] = tqdm(total=total, desc=phase, leave=False, file=sys.stderr)
                bar.n = int(event["done"])  # type: ignore[call-overload]
                if kind == "evaluation":
                    bar.set_postfix(best=event.get("best_val_acc"), met=event.get("meets_budget"), refresh=False)
                bar.refresh()
        elif kind == "budget":
            self.log.info("budget", **{k: v for k, v in event.items() if k != "type"})
