"""Every preflight refusal names the layer and the spec field to set; REST answers 400 on that
field and the CLI exits 2, before any training."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import preflight
from search_spaces.plan import ModelIdentity
from search_spaces.preflight import PreflightError, checked_space
from search_spaces.space import PruningSpace
from search_spaces.zoo import build_model
from service.api.deps import spec_refused
from service.config import Settings
from service.preflight import SpecRefused, check_submission
from service.spec import parse_spec
from tests.conftest import job_dict

IDENT = {"num_classes": 5, "in_channels": 3, "input_size": 8}


class TopKGate(nn.Module):
    """Gated by its 4 strongest channels: needs at least 4 channels, so only deep pruning breaks it."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        gate = torch.sigmoid(x.topk(4, dim=1).values.mean(dim=1, keepdim=True))
        return self.fc((x * gate).mean(dim=(2, 3)))


class Narrow(nn.Module):
    """One 8-channel conv before the classifier."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


class OnlyAttention(nn.Module):
    """Patch embedding into nn.MultiheadAttention: its width is the only group, and it cannot shrink."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, 16, 2, stride=2)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.fc(self.attn(t, t, t, need_weights=False)[0].mean(dim=1))


class FixedInput(nn.Module):
    """A classifier on flattened 8x8 maps: other input sizes do not run."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


class Untraceable(Narrow):
    """Runs for inference but not under the autograd tracing Torch-Pruning needs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("this model refuses autograd")
        return super().forward(x)


FACTORIES = {cls.__name__.lower(): f"tests.test_preflight:{cls.__name__}"
             for cls in (TopKGate, Narrow, OnlyAttention, FixedInput, Untraceable)}


def model_of(name: str, input_size: int = 8) -> tuple[nn.Module, ModelIdentity]:
    ident = ModelIdentity(arch=f"factory:{name}", **{**IDENT, "input_size": input_size})
    return build_model(ident, FACTORIES), ident


def refusal(name: str, input_size: int = 8, **settings: object) -> PreflightError:
    model, ident = model_of(name, input_size)
    with pytest.raises(PreflightError) as info:
        checked_space(model, ident, **settings)  # type: ignore[arg-type]
    return info.value


def test_a_layer_that_breaks_only_when_pruned_deepest_is_refused_with_max_ratio() -> None:
    exc = refusal("topkgate", max_ratio=0.9)
    assert exc.field == "max_ratio" and str(exc).startswith("max_ratio: ")
    assert "'conv'" in str(exc) and "keep_layers" in str(exc) and exc.layers == ("conv",)
    space = checked_space(*model_of("topkgate"), max_ratio=0.7)  # 5 of 16 channels left: the gate still works
    assert [d.name for d in space.dimensions] == ["conv"]


def test_round_to_that_leaves_no_smaller_width_is_refused() -> None:
    exc = refusal("narrow", round_to=16)
    assert exc.field == "round_to" and "'conv'" in str(exc) and "round_to" in str(exc)


def test_max_ratio_that_removes_nothing_is_refused() -> None:
    exc = refusal("narrow", max_ratio=0.05)
    assert exc.field == "max_ratio" and "'conv'" in str(exc)


def test_a_model_with_nothing_prunable_left_is_refused_with_the_excluded_layers() -> None:
    exc = refusal("onlyattention")
    assert exc.field == "dimensions" and exc.layers == ("patch",) and "'patch'" in str(exc)
    assert "embed_dim" in str(exc)  # the reason PyTorch gave, kept for the user


def test_a_base_model_that_does_not_run_on_its_declared_input_is_refused() -> None:
    exc = refusal("fixedinput", input_size=6)
    assert exc.field == "model.input_size" and "(2, 3, 6, 6)" in str(exc)


def test_a_model_torch_pruning_cannot_trace_is_refused_with_dimensions() -> None:
    exc = refusal("untraceable")
    assert exc.field == "dimensions" and "unstructured" in str(exc) and "refuses autograd" in str(exc)
    space = checked_space(*model_of("untraceable"), dimensions=["unstructured"])  # no graph needed
    assert [d.name for d in space.dimensions] == ["conv"]


def test_layers_that_fail_only_together_are_refused_with_keep_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No single layer to blame: the preflight refuses rather than guess which to exclude."""
    real = preflight._run

    def only_together(space: PruningSpace, ratios: Mapping[str, float], *args: Any) -> str | None:
        return "RuntimeError: boom" if len(ratios) > 1 else real(space, ratios, *args)

    monkeypatch.setattr(preflight, "_run", only_together)
    from tests.test_zoo_sweep import ResidualNet

    with pytest.raises(PreflightError) as info:
        checked_space(ResidualNet(**IDENT), ModelIdentity(arch="factory:residual", **IDENT))
    assert info.value.field == "keep_layers" and len(info.value.layers) > 1
    assert all(f"'{layer}'" in str(info.value) for layer in info.value.layers)


def test_rest_submission_answers_400_on_the_field(tmp_path: Path) -> None:
    settings = Settings(model_factories=FACTORIES, artifact_dir=tmp_path)
    spec = parse_spec(job_dict(model={"arch": "factory:topkgate", "num_classes": 10, "in_channels": 1,
                                      "input_size": 8, "weights": {"train_epochs": 1}}, max_ratio=0.9))
    with pytest.raises(SpecRefused) as info:
        check_submission(spec, settings)
    answer = asyncio.run(spec_refused(None, info.value))  # type: ignore[arg-type]  # what deps.py answers over HTTP
    assert answer.status_code == 400
    detail = json.loads(answer.body)["detail"][0]
    assert detail["loc"] == ["body", "max_ratio"] and "'conv'" in detail["msg"]


def test_cli_run_exits_2_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    monkeypatch.setenv("PRUNESEARCH_MODEL_FACTORIES", json.dumps(FACTORIES))
    job = job_dict(model={"arch": "factory:narrow", "num_classes": 10, "in_channels": 1, "input_size": 8,
                          "weights": {"train_epochs": 50}}, round_to=16)
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main(["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out"), "--local", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "round_to: " in err and "'conv'" in err
    assert not (tmp_path / "out" / "report.json").exists()
