"""The job spec: every invalid field is named with its reason; the example jobs validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.spec import JobSpec, SpecError, load_spec, parse_spec
from tests.conftest import job_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["digits_demo.yaml", "resnet20_fashion_latency.yaml"])
def test_example_jobs_validate(name: str) -> None:
    spec = load_spec(ROOT / "examples" / name)
    assert spec.budget.metric == "latency_ms" and spec.device.threads == 1 and spec.device.batch_size == 32


@pytest.mark.parametrize(("override", "field"), [
    ({"budget": {"metric": "flops", "target": 1.5}}, "budget.target"),
    ({"budget": {"metric": "energy", "target": 0.5}}, "budget.metric"),
    ({"max_ratio": 1.0}, "max_ratio"),
    ({"round_to": 0}, "round_to"),
    ({"device": {"name": "tpu"}}, "device.name"),
    ({"device": {"threads": 0}}, "device.threads"),
    ({"device": {"runtime": "tensorrt"}}, "device.runtime"),
    ({"criterion": "vibes"}, "criterion"),
    ({"strategy": {"name": "magic"}}, "strategy"),
    ({"strategy": {"name": "uniform", "steps": 1}}, "strategy.uniform.steps"),
    ({"model": {"arch": "resnet20", "weights": {"train_epochs": 0}}}, "model.weights"),
    ({"surprise": 1}, "surprise"),
    ({"dataset": {"name": "digits", "val_size": 0}}, "dataset.val_size"),
])
def test_invalid_fields_are_named(override: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(job_dict(**override))
    assert field in str(info.value)


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(job_dict(round_to=0, max_ratio=2))
    assert "round_to" in str(info.value) and "max_ratio" in str(info.value)


def test_yaml_and_json_files(tmp_path: Path) -> None:
    import json

    (tmp_path / "job.json").write_text(json.dumps(job_dict()))
    assert isinstance(load_spec(tmp_path / "job.json"), JobSpec)
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(tmp_path / "list.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
