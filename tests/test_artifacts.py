"""Pruned models round-trip through plan.json + safetensors without pickle, and export to ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from search_spaces.artifacts import export_onnx, load_pruned, save_pruned
from search_spaces.plan import PLAN_SCHEMA_VERSION, Plan, PlanMismatchError
from search_spaces.weights import WeightsError, read_state_dict
from tests.conftest import make_space


@pytest.mark.parametrize(("arch", "channels", "size"), [("resnet20", 1, 12), ("mobilenetv2", 3, 16)])
def test_round_trip_gives_identical_outputs(tmp_path: Path, arch: str, channels: int, size: int) -> None:
    space = make_space(arch, size, channels)
    ratios = {d.name: 0.1 * (i % 8) for i, d in enumerate(space.dimensions)}
    pruned = space.apply(ratios)
    plan = space.plan(ratios, pruned)
    save_pruned(tmp_path, pruned, plan)
    loaded, loaded_plan = load_pruned(tmp_path)
    x = torch.randn(4, channels, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert loaded_plan == plan


def test_plan_json_records_groups_layers_and_cost(tmp_path: Path) -> None:
    space = make_space("resnet20")
    plan = space.plan(space.uniform(0.5))
    save_pruned(tmp_path, space.apply(space.uniform(0.5)), plan)
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["schema_version"] == PLAN_SCHEMA_VERSION == 3 and data["fingerprint"] == space.fingerprint
    assert {g["name"] for g in data["groups"]} == {d.name for d in space.dimensions}
    assert all(0 <= layer["sparsity"] < 1 for layer in data["layers"])
    assert data["flops_after"] < data["flops_before"]
    assert {g["effective_ratio"] for g in data["groups"]} == {0.5}


def test_a_schema_2_plan_with_channels_still_loads_and_rebuilds(tmp_path: Path) -> None:
    """Schema 3 renamed a group's `channels` to `units`; plans written before still rebuild the same model."""
    space = make_space("resnet20")
    pruned = space.apply(space.uniform(0.5))
    save_pruned(tmp_path, pruned, space.plan(space.uniform(0.5)))
    data = json.loads((tmp_path / "plan.json").read_text())
    data["schema_version"] = 2
    for group in data["groups"]:
        group["channels"] = group.pop("units")
    (tmp_path / "plan.json").write_text(json.dumps(data))
    loaded, plan = load_pruned(tmp_path)
    assert [g.units for g in plan.groups] == [d.units for d in space.dimensions]
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_onnx_matches_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    space = make_space("resnet20")
    pruned = space.apply(space.uniform(0.4))
    x = torch.randn(3, 1, 12, 12)
    assert export_onnx(pruned, x[:1], tmp_path / "m.onnx") is None
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]  # dynamic batch axis: export at 1, run at 3
    with torch.no_grad():
        np.testing.assert_allclose(got, pruned(x).numpy(), rtol=1e-4, atol=1e-5)


def test_plan_for_another_model_is_refused() -> None:
    space = make_space("resnet20")
    plan = space.plan(space.uniform(0.3))
    other = make_space("resnet20")
    with torch.no_grad():
        next(other.base.parameters()).add_(1.0)
    from search_spaces.space import PruningSpace

    other = PruningSpace(other.base, other.identity)
    with pytest.raises(PlanMismatchError, match="made for base model"):
        other.apply_plan(plan)
    vgg = make_space("vgg11_bn", 16, 3)
    with pytest.raises(PlanMismatchError, match="plan is for"):
        vgg.apply_plan(plan)
    assert torch.equal(space.apply_plan(plan).fc.weight, space.apply(space.uniform(0.3)).fc.weight)


def test_corrupt_and_foreign_weights_files_get_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(bad)
    pickle_file = tmp_path / "evil.pt"
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    pickle_file.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(WeightsError):
        read_state_dict(pickle_file)
    with pytest.raises(WeightsError, match=r"must be \.safetensors"):
        (tmp_path / "w.pkl").write_bytes(b"x")
        read_state_dict(tmp_path / "w.pkl")
    with pytest.raises(WeightsError, match="file not found"):
        read_state_dict(tmp_path / "missing.safetensors")


def test_weights_that_do_not_fit_the_plan_are_refused(tmp_path: Path) -> None:
    space = make_space("resnet20")
    save_pruned(tmp_path, space.apply(space.uniform(0.5)), space.plan(space.uniform(0.5)))
    plan = Plan.read(tmp_path / "plan.json")
    edited = plan.model_copy(update={"groups": [g.model_copy(update={"kept": g.units}) for g in plan.groups]})
    (tmp_path / "plan.json").write_text(edited.to_json())
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_pruned(tmp_path)
