"""Every event kind the code emits is declared once (`agents/events.py`), and every declaration is used."""

from __future__ import annotations

import ast
import string
from pathlib import Path

from agents.events import EVENT_KINDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "agents", "measurement", "service")
EMITTERS = {"emit", "append_event", "_add_event", "bars"}  # the calls that take an event dict


def emitted_kinds() -> dict[str, list[str]]:
    """Kind -> where it is emitted: every `{"type": "<kind>", ...}` literal passed to an emitting call."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for call in ast.walk(ast.parse(path.read_text())):
                if not isinstance(call, ast.Call):
                    continue
                name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
                if name not in EMITTERS:
                    continue
                for arg in call.args:
                    for node in ast.walk(arg):
                        if isinstance(node, ast.Dict):
                            for key, value in zip(node.keys, node.values, strict=True):
                                if (isinstance(key, ast.Constant) and key.value == "type"
                                        and isinstance(value, ast.Constant) and isinstance(value.value, str)):
                                    found.setdefault(value.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_emitted_kind_is_declared_and_every_declared_kind_is_emitted() -> None:
    emitted = emitted_kinds()
    assert {"phase", "evaluation", "trial", "retime", "failed"} <= set(emitted)  # the scan finds what it should
    undeclared = {kind: where for kind, where in emitted.items() if kind not in EVENT_KINDS}
    assert not undeclared, f"declare these in agents/events.py: {undeclared}"
    assert not set(EVENT_KINDS) - set(emitted), "declared but never emitted"


def test_summaries_are_templates_over_fields() -> None:
    for kind, template in EVENT_KINDS.items():
        assert template.count("[") == template.count("]"), kind
        fields = [f for _, f, spec, _ in string.Formatter().parse(template.replace("[", "").replace("]", "")) if f]
        assert all(f.isidentifier() for f in fields), (kind, fields)
        specs = {spec for _, f, spec, _ in string.Formatter().parse(template.replace("[", "").replace("]", "")) if f}
        assert specs <= {"", "%", "n", "4"}, (kind, specs)
