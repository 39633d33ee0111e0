"""The pruning space: dimensions from the dependency graph, plans applied as physically smaller models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search_spaces.kinds import DATA_DRIVEN, DATA_FREE
from search_spaces.layers import SpaceError, describe_layers
from search_spaces.space import PruningSpace
from search_spaces.zoo import build_model
from tests.conftest import identity, make_space, synthetic_splits, trained_like

ZOO = [("resnet20", 1, 12), ("small_cnn", 1, 8), ("mobilenetv2", 3, 16), ("vgg11_bn", 3, 16)]


@pytest.mark.parametrize(("arch", "channels", "size"), ZOO)
def test_zero_plan_reproduces_base_outputs_exactly(arch: str, channels: int, size: int) -> None:
    space = make_space(arch, size, channels)
    x = torch.randn(3, channels, size, size)
    with torch.no_grad():
        assert torch.equal(space.apply({})(x), space.base(x))


@pytest.mark.parametrize(("arch", "channels", "size"), ZOO)
def test_pruned_model_is_physically_smaller_and_runs(arch: str, channels: int, size: int) -> None:
    space = make_space(arch, size, channels)
    pruned = space.apply(space.uniform(0.5))
    n_base = sum(p.numel() for p in space.base.parameters())
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert n_pruned < 0.6 * n_base
    assert pruned(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_resnet_groups_couple_residual_stages() -> None:
    space = make_space("resnet20")
    names = {d.name: d for d in space.dimensions}
    assert len(space.dimensions) == 12  # 3 residual stages + 9 block-internal convs
    stage1 = names["conv1"]
    assert set(stage1.members) == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert "fc" not in {m for d in space.dimensions for m in d.members}  # the head is never pruned


def test_residual_coupled_layers_stay_consistent() -> None:
    space = make_space("resnet20")
    ratios = {d.name: 0.25 + 0.05 * i for i, d in enumerate(space.dimensions)}
    pruned = space.apply(ratios)
    modules = dict(pruned.named_modules())
    for dim in space.dimensions:
        outs = {modules[m].out_channels for m in dim.members}  # type: ignore[union-attr]
        assert len(outs) == 1, f"{dim.name} members disagree: {outs}"
        ins = {getattr(modules[c], "in_channels", getattr(modules[c], "in_features", None)) for c in dim.consumers}
        assert ins == outs
    assert pruned(torch.randn(2, 1, 12, 12)).shape == (2, 10)


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_ratios_and_round_to_are_respected(round_to: int) -> None:
    space = make_space("resnet20", round_to=round_to)
    ratios = {d.name: r for d, r in zip(space.dimensions, [0.1, 0.3, 0.5, 0.7] * 3, strict=True)}
    plan = space.plan(ratios)
    for group in plan.groups:
        dim = space.dimension(group.name)
        assert group.kept % round_to == 0 or group.kept == dim.units
        assert abs(group.kept - dim.units * (1 - ratios[group.name])) <= round_to / 2 + 1e-9
    layers = {layer.name: layer for layer in plan.layers}
    for group in plan.groups:
        for member in group.members:
            assert layers[member].out_after == group.kept


def test_max_ratio_bounds_every_group() -> None:
    space = make_space("resnet20", max_ratio=0.5)
    kept = space.kept_for({d.name: 0.95 for d in space.dimensions})
    for dim in space.dimensions:
        assert kept[dim.name] >= dim.units / 2


def test_keep_layers_are_not_pruned() -> None:
    space = make_space("resnet20", keep_layers=["layer2.1.conv1"])
    assert "layer2.1.conv1" not in {d.name for d in space.dimensions}
    pruned = space.apply(space.uniform(0.5))
    assert dict(pruned.named_modules())["layer2.1.conv1"].out_channels == 32  # type: ignore[union-attr]


def test_bad_requests_name_the_problem() -> None:
    space = make_space("small_cnn", 8)
    with pytest.raises(SpaceError, match="unknown group 'nope'"):
        space.apply({"nope": 0.5})
    with pytest.raises(SpaceError, match=r"must be in \[0, 1\)"):
        space.apply({space.dimensions[0].name: 1.5})
    with pytest.raises(SpaceError, match="keep_layers: no such module"):
        make_space("small_cnn", 8, keep_layers=["not.a.layer"])


@pytest.mark.parametrize("criterion", DATA_FREE + DATA_DRIVEN)
def test_every_criterion_prunes_to_the_same_structure(criterion: str) -> None:
    data = synthetic_splits(1, 8)
    calib = list(data.train.batches(16, limit=32))
    ident = identity("small_cnn", 1, 8)
    model = trained_like(build_model(ident))
    space = PruningSpace(model, ident, criterion=criterion, calibration=calib)
    pruned = space.apply(space.uniform(0.5))
    assert [p.shape for p in pruned.parameters()] == [p.shape for p in make_space("small_cnn", 8).apply(
        make_space("small_cnn", 8).uniform(0.5)).parameters()]
    assert torch.isfinite(pruned(data.val.x[:4])).all()


def test_criteria_choose_different_channels() -> None:
    """L1 keeps the largest-norm channels: planting a huge filter must keep it, a zero filter must go."""
    space = make_space("small_cnn", 8)
    conv = space.base.conv3[0]  # type: ignore[index]
    with torch.no_grad():
        conv.weight[5].fill_(10.0)
        conv.weight[7].zero_()
    space = PruningSpace(space.base, space.identity, criterion="l1")
    pruned = space.apply({"conv3.0": 0.5})
    kept = pruned.conv3[0].weight  # type: ignore[index]
    assert any(torch.equal(w, conv.weight[5]) for w in kept)
    assert not any(torch.equal(w, conv.weight[7]) for w in kept)


def test_data_driven_criterion_without_data_is_refused() -> None:
    ident = identity("small_cnn", 1, 8)
    with pytest.raises(SpaceError, match="needs calibration"):
        PruningSpace(build_model(ident), ident, criterion="taylor")


def test_layer_descriptors_describe_shapes_and_cost() -> None:
    model = build_model(identity("resnet20", 1, 12))
    layers = describe_layers(model, torch.zeros(1, 1, 12, 12))
    first = layers[0]
    assert (first.name, first.kind, first.in_channels, first.out_channels, first.kernel, first.stride) == \
        ("conv1", "conv", 1, 16, 3, 1)
    assert first.flops == 12 * 12 * 16 * 9
    assert layers[-1].kind == "linear" and layers[-1].name == "fc"
    assert [info.index for info in layers] == list(range(len(layers)))
    assert isinstance(dict(model.named_modules())["layer1.0.conv1"], nn.Conv2d)
