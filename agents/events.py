"""Every kind of event a job emits, declared once, with the line the dashboard's event log shows for it.

Agents, the pipeline, the worker and the store emit these; `/catalog` serves them, so the dashboard
renders an event from its declaration instead of a copy, and `tests/test_events.py` fails on an
emitted kind that is not declared here.

Summary templates: `{field}` inserts a field; `{field:%}` shows a fraction as a percentage, `{field:n}`
a count, `{field:4}` four significant digits, a boolean as yes/no; `[...]` is left out unless every
field inside it is set.
"""

from __future__ import annotations

EVENT_KINDS: dict[str, str] = {
    # the job's course
    "phase": "phase {phase} {state}[ after {seconds:4} s][, failed: {error}]",
    "progress": "{phase} {done}/{total}[, loss {loss:4}]",
    "budget": "budget: {metric} ≤ {limit:4} ({target_ratio:%} of the base)",
    "evaluation": "evaluation {done}[/{planned}]: val acc {val_acc:%}[, latency ×{latency_ratio:4} "
                  "({latency_source})], FLOPs {flops:n}, meets the budget: {meets_budget}",
    "resumed": "resumed after {evaluations} recorded evaluations",
    "resume_skipped": "not resumed: {reason}",
    "baseline": "{name} baseline: val acc {val_acc:%}[, latency ×{latency_ratio:4}], FLOPs {flops:n}",
    "sweep_point": "uniform sweep at {ratio:%}: val acc {val_acc:%}[, latency ×{latency_ratio:4}], FLOPs {flops:n}",
    "retime": "re-timed {source} in a fresh process: ×{retimed_ratio:4}[, the median of {median_of} timings]"
              "[ (search ×{search_latency_ratio:4})], {verdict}",
    "rescaling": "{source}[: ×{timed_over_origin:4} of its origin timed together, so ×{expected_ratio:4} "
                 "expected], {outcome}",
    "done": "done: artifacts written",
    "failed": "failed: {error}",
    "cancelled": "cancelled[: {reason}]",
    "requeued": "requeued[: {reason}]",
    # strategies
    "bisection": "bisection: knob {knob:4}, meets the budget: {meets_budget}",
    "warm_start": "warm start[: {groups} of {of} groups][, resource {resource_ratio:%}]",
    "warm_start_skipped": "no warm start: {reason}",
    "sensitivity_point": "sensitivity[ {group}] @ {ratio:%}: val acc {val_acc:%}",
    "sensitivity_curve": "sensitivity curve of {group}",
    "sensitivity_plan": "sensitivity threshold {threshold:4}: val acc {val_acc:%}, meets the budget: {meets_budget}",
    "netadapt_iteration": "NetAdapt iteration {iteration}: group {group}, val acc {val_acc:%}, "
                          "resource {resource_ratio:%}",
    "amc_episode": "AMC episode {episode}: reward {reward:4}, val acc {val_acc:%}",
    "amc_confirm": "AMC episode {episode} timed: ×{latency_ratio:4}, meets the budget: {meets_budget}",
    "trial": "trial {number}: val acc {val_acc:%}, resource {resource_ratio:%}, feasible: {feasible}",
    "halp_scan": "HALP sensitivity scan at ratios {ratios}",
    "variant": "HALP variant {variant}: val acc {val_acc:%}[, latency ×{latency_ratio:4}], "
               "meets the budget: {meets_budget}",
}
