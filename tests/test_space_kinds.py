"""The kinds of search-space dimension beyond channels: residual blocks, attention heads,
unstructured and N:M sparsity.

Each kind is checked through the space's own operations (the cheap `cost` against the `count` of
the model `apply` builds, the plan, the layer shapes cost tables read, save and load), through the
job spec's rules, through every agent, and through one job end to end. Models are the zoo's
smallest, at 8-28 px, so the whole file runs in well under a minute on a CPU.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from agents.base import Evaluation, SearchContext
from agents.budget import Budget
from agents.driver import SearchOutcome, run_search
from agents.registry import AGENTS, make_agent
from search_spaces import sparsity
from search_spaces.artifacts import SPARSE_WEIGHTS_FILE, WEIGHTS_FILE, load_pruned, save_pruned
from search_spaces.datasets import DataSplits
from search_spaces.layers import SpaceError, count_cost
from search_spaces.plan import ModelIdentity
from search_spaces.space import PruningSpace
from search_spaces.sparse_format import load_sparse
from search_spaces.zoo import build_model
from search_spaces.zoo.resnet_cifar import BasicBlock, CifarResNet
from service.execution.evaluation import AccuracyRecipe, LocalEvaluator
from service.pipeline import run_job
from service.spec import SpecError, parse_spec
from tests.conftest import FAST_STRATEGIES, job_dict, make_space, synthetic_splits, trained_like

RESNET20_BLOCKS = ("layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2")
DROPPED = ("layer1.1", "layer3.2")
SMALL_CNN_LAYERS = ("stem.0", "conv2.0", "conv3.0")  # every conv/linear layer but the classifier `fc`
Batches = list[tuple[torch.Tensor, torch.Tensor]]


# -- helpers -------------------------------------------------------------------------------------

def resnet20_28(**kwargs: Any) -> PruningSpace:
    ident = ModelIdentity(arch="resnet20", num_classes=10, in_channels=1, input_size=28)
    return PruningSpace(trained_like(CifarResNet(20, 10, 1)), ident, **kwargs)


def vit_space(**kwargs: Any) -> PruningSpace:
    ident = ModelIdentity(arch="vit_tiny", num_classes=10, in_channels=1, input_size=28)
    return PruningSpace(build_model(ident).eval(), ident, **kwargs)


def calibration() -> Batches:
    return list(synthetic_splits(1, 8).train.batches(16, limit=32))


def sparse_space(criterion: str, base: nn.Module | None = None, **kwargs: Any) -> PruningSpace:
    """small_cnn at 8 px with unstructured dimensions; data-driven criteria get calibration batches."""
    ident = ModelIdentity(arch="small_cnn", num_classes=10, in_channels=1, input_size=8)
    model = base if base is not None else trained_like(build_model(ident))
    calib = calibration() if criterion in ("wanda", "obd") else None
    return PruningSpace(model, ident, kinds=kwargs.pop("kinds", ("unstructured",)), criterion=criterion,
                        calibration=calib, **kwargs)


def depth_plan(space: PruningSpace) -> dict[str, float]:
    """Two blocks dropped on top of a 0.3 width plan."""
    return {**space.uniform(0.3), **dict.fromkeys(DROPPED, 1.0)}


def layer(model: nn.Module, name: str) -> nn.Conv2d | nn.Linear:
    found = model.get_submodule(name)
    assert isinstance(found, nn.Conv2d | nn.Linear)
    return found


def io_channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) channels of every conv/linear layer the model still has, read from its weights."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = (m.weight.shape[1] * m.groups, m.weight.shape[0])
        elif isinstance(m, nn.Linear):
            shapes[name] = (m.weight.shape[1], m.weight.shape[0])
    return shapes


def zeros(model: nn.Module, name: str) -> int:
    weight = layer(model, name).weight
    return int(weight.numel() - torch.count_nonzero(weight))


def same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def covers(space: PruningSpace, blocks: tuple[str, ...]) -> set[str]:
    return {name for b in blocks for name in space.dimension(b).covers}


@pytest.fixture(scope="module")
def depth_space() -> PruningSpace:
    return resnet20_28(kinds=("channel", "block"))


# -- 1. residual blocks (ResNet-20) ---------------------------------------------------------------

def test_each_kind_is_one_registered_module_and_its_name_is_declared_once() -> None:
    """The registry the spec, catalog and pruning code read: one `SpaceKindRules` per kind, each in the
    module named after it, every granularity found by a registered kind; a second declaration is refused."""
    from typing import get_args

    from search_spaces.kinds import GRANULARITIES, RULES, SPACE_KINDS, SpaceKind
    from search_spaces.space_kinds.base import GranularityInfo, SpaceKindRules

    assert set(SPACE_KINDS) == set(RULES) == set(get_args(SpaceKind))
    assert all(type(rules).__module__ == f"search_spaces.space_kinds.{name}" for name, rules in RULES.items())
    assert {info.kind for info in GRANULARITIES.values()} == set(SPACE_KINDS)
    with pytest.raises(TypeError, match="declared twice"):
        type("Again", (SpaceKindRules,), {"name": "block", "order": 9,
                                          "granularities": {"block": GranularityInfo("x")}})
    assert RULES["block"].granularities["block"].unit == "block"


def test_resnet20_has_one_binary_block_dimension_per_identity_block(depth_space: PruningSpace) -> None:
    blocks = [d for d in depth_space.dimensions if d.granularity == "block"]
    assert tuple(d.name for d in blocks) == RESNET20_BLOCKS
    for d in blocks:
        assert (d.units, d.min_kept, d.max_ratio, d.binary) == (1, 0, 1.0, True)
        assert d.covers == (f"{d.name}.conv1", f"{d.name}.conv2")
    channel_only = resnet20_28()
    assert [d.name for d in depth_space.dimensions if d.granularity == "channel"] == \
        [d.name for d in channel_only.dimensions]
    assert all(depth_space.uniform(0.7)[b] == 0.0 for b in RESNET20_BLOCKS)  # uniform is a width baseline
    assert all(depth_space.smallest()[b] == 1.0 for b in RESNET20_BLOCKS)


def test_dropping_blocks_costs_what_the_built_model_counts(depth_space: PruningSpace) -> None:
    ratios = depth_plan(depth_space)
    pruned = depth_space.apply(ratios)
    assert depth_space.cost(ratios) == depth_space.count(pruned)
    width_only = depth_space.cost(depth_space.uniform(0.3))
    assert depth_space.cost(ratios)[0] < width_only[0] and depth_space.cost(ratios)[1] < width_only[1]
    for b in RESNET20_BLOCKS:
        assert isinstance(pruned.get_submodule(b), nn.Identity if b in DROPPED else BasicBlock), b
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_plan_records_dropped_blocks_as_kept_zero(depth_space: PruningSpace) -> None:
    ratios = depth_plan(depth_space)
    pruned = depth_space.apply(ratios)
    plan = depth_space.plan(ratios, pruned)
    groups = {g.name: g for g in plan.groups}
    for b in RESNET20_BLOCKS:
        assert groups[b].granularity == "block" and groups[b].units == 1
        assert groups[b].kept == (0 if b in DROPPED else 1)
    assert groups["layer1.1"].members == ["layer1.1.conv1", "layer1.1.conv2"]
    assert groups["layer1.1"].effective_ratio == 1.0
    gone = covers(depth_space, DROPPED)
    for result in plan.layers:
        if result.name in gone:
            assert (result.in_after, result.out_after, result.params_after) == (0, 0, 0), result.name
        else:
            assert result.out_after > 0 and result.params_after > 0, result.name
    assert (plan.flops_after, plan.params_after) == depth_space.cost(ratios)


def test_layer_shapes_match_the_pruned_model_and_are_none_for_dropped_blocks(depth_space: PruningSpace) -> None:
    ratios = depth_plan(depth_space)
    shapes = depth_space.layer_shapes(depth_space.kept_for(ratios))
    assert {name for name, s in shapes.items() if s is None} == covers(depth_space, DROPPED)
    actual = io_channels(depth_space.apply(ratios))
    for name, shape in shapes.items():
        if shape is not None:
            assert (shape[0], shape[1]) == actual[name] and shape[2] == 1.0, name


def test_depth_plan_round_trips_through_artifacts(depth_space: PruningSpace, tmp_path: Path) -> None:
    ratios = depth_plan(depth_space)
    pruned = depth_space.apply(ratios)
    plan = depth_space.plan(ratios, pruned)
    sizes = save_pruned(tmp_path, pruned, plan)
    assert set(sizes) == {WEIGHTS_FILE}  # structured plans store no sparse file
    assert not (tmp_path / SPARSE_WEIGHTS_FILE).exists()
    loaded, loaded_plan = load_pruned(tmp_path)
    assert loaded_plan == plan and loaded_plan.schema_version == 3
    assert all(isinstance(loaded.get_submodule(b), nn.Identity) for b in DROPPED)
    assert same_outputs(loaded, pruned, torch.randn(3, 1, 28, 28))


def test_binary_dimensions_snap_at_half_their_maximum(depth_space: PruningSpace) -> None:
    block = depth_space.dimension("layer2.1")
    assert (block.snap(0.49), block.snap(0.5), block.snap(0.99), block.snap(1.0)) == (0.0, 1.0, 1.0, 1.0)
    assert block.is_on(0.5) and not block.is_on(0.4999)
    assert (block.kept(0.0), block.kept(0.49), block.kept(0.5), block.kept(1.0)) == (1, 1, 0, 0)
    with pytest.raises(SpaceError, match=r"block dimension 'layer2\.1'"):
        block.kept(1.01)
    assert depth_space.kept_for({"layer2.1": 0.6})["layer2.1"] == 0  # an agent's float drops the block
    channel = depth_space.dimension("conv1")
    assert not channel.binary
    assert channel.max_ratio == 1 - 2 / 16  # at most 90% of 16 channels go: 2 stay
    assert (channel.snap(-0.2), channel.snap(0.4), channel.snap(0.95)) == (0.0, 0.4, channel.max_ratio)
    with pytest.raises(SpaceError, match=r"\[0, 1\)"):
        channel.kept(1.0)
    nm = make_space("resnet20", 12, kinds=("nm",)).dimensions[0]
    assert nm.max_ratio == 0.5 and nm.is_on(0.25) and not nm.is_on(0.24)
    assert (nm.snap(0.3), nm.snap(0.2)) == (0.5, 0.0)


def test_mobilenetv2_drops_its_inverted_residual_blocks_as_identities() -> None:
    """A residual block is `x + f(x)` with nothing after the sum, so a dropped one is exactly f = 0."""
    ident = ModelIdentity(arch="mobilenetv2", num_classes=10, in_channels=1, input_size=28)
    space = PruningSpace(trained_like(build_model(ident)), ident, kinds=("channel", "block"))
    blocks = [d.name for d in space.dimensions if d.granularity == "block"]
    assert blocks == [f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]  # stride 1, cin == cout
    ratios = {**space.uniform(0.3), **dict.fromkeys(blocks[::3], 1.0)}
    pruned = space.apply(ratios)
    assert space.cost(ratios) == space.count(pruned)
    assert all(isinstance(pruned.get_submodule(b), nn.Identity) == (b in blocks[::3]) for b in blocks)
    base, zeroed = copy.deepcopy(space.base), copy.deepcopy(space.base)
    last_bn = zeroed.get_submodule(f"{blocks[0]}.conv.2.1")
    nn.init.zeros_(last_bn.weight), nn.init.zeros_(last_bn.bias)  # the residual branch made zero
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(zeroed.eval()(x), space.apply({blocks[0]: 1.0}).eval()(x), atol=1e-5)
    with torch.no_grad():  # features.3 is the block: with its branch at zero it passes features.2's output on
        before, after = base.eval().features[:3](x), base.features[:4](x)
        assert torch.equal(zeroed.features[:4](x), before) and not torch.allclose(after, before, atol=1e-3)


def test_block_kind_needs_a_model_with_residual_blocks() -> None:
    with pytest.raises(SpaceError, match="no prunable dimension of kind block"):
        make_space("small_cnn", 8, kinds=("block",))


# -- 2. unstructured sparsity ---------------------------------------------------------------------

def test_unstructured_dimensions_are_every_layer_but_the_classifier() -> None:
    space = sparse_space("l1")
    assert tuple(d.name for d in space.dimensions) == SMALL_CNN_LAYERS
    for d in space.dimensions:
        assert d.granularity == "unstructured" and not d.binary
        assert d.units == layer(space.base, d.name).weight.numel() and d.members == (d.name,)
    assert space.params == sparsity.nonzero_parameters(space.base)
    assert space.flops == count_cost(space.base, space.example)[0]


@pytest.mark.parametrize("criterion", ["l1", "magnitude", "wanda", "obd"])
def test_unstructured_uniform_zeroes_the_kept_count_of_every_layer(criterion: str) -> None:
    space = sparse_space(criterion)
    ratios = space.uniform(0.7)
    pruned = space.apply(ratios)
    for d in space.dimensions:
        assert zeros(pruned, d.name) == d.units - d.kept(ratios[d.name]), d.name
        # wanda keeps whole rows' worth (round_to = rows), so it is off by at most half a weight per row
        assert zeros(pruned, d.name) == pytest.approx(0.7 * d.units, abs=max(1, d.round_to / 2)), d.name
    assert zeros(pruned, "fc") == 0  # the classifier is not a dimension


@pytest.mark.parametrize("criterion", ["l1", "magnitude", "wanda", "obd"])
def test_unstructured_cost_counts_nonzero_params_and_keeps_flops(criterion: str) -> None:
    space = sparse_space(criterion)
    ratios = space.uniform(0.7)
    pruned = space.apply(ratios)
    flops, params = space.count(pruned)
    assert params == sparsity.nonzero_parameters(pruned)
    assert flops == space.flops == count_cost(space.base, space.example)[0]  # dense kernels run the zeros
    assert space.cost(ratios) == (flops, params)


def test_unstructured_cost_holds_on_a_base_that_already_has_zeros() -> None:
    """A checkpoint from an earlier fine-grained job has zeros; the criterion ranks them lowest, so a
    plan removes them first and `cost` must not count them as removed twice."""
    base = sparse_space("l1").base
    with torch.no_grad():
        layer(base, "conv2.0").weight[:8].zero_()  # a quarter of the layer already pruned
    space = sparse_space("l1", base=base)
    ratios = space.uniform(0.5)
    assert space.cost(ratios) == space.count(space.apply(ratios))


def test_wanda_and_magnitude_choose_different_weights() -> None:
    base = sparse_space("l1").base
    magnitude = sparse_space("magnitude", base=base).apply({"conv2.0": 0.5})
    wanda = sparse_space("wanda", base=base).apply({"conv2.0": 0.5})
    mask_m = layer(magnitude, "conv2.0").weight != 0
    mask_w = layer(wanda, "conv2.0").weight != 0
    assert not torch.equal(mask_m, mask_w)
    per_row = mask_w.reshape(mask_w.shape[0], -1).sum(1)
    assert bool((per_row == per_row[0]).all())  # wanda compares within each output row
    scores = layer(base, "conv2.0").weight.abs()  # magnitude keeps exactly the larger half
    assert scores[mask_m].min() >= scores[~mask_m].max()


@pytest.mark.parametrize("criterion", ["l1", "wanda"])
def test_sparse_artifacts_store_both_files_and_round_trip(criterion: str, tmp_path: Path) -> None:
    space = sparse_space(criterion)
    ratios = space.uniform(0.7)
    pruned = sparsity.make_permanent(space.apply(ratios))
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())
    plan = space.plan(ratios, pruned)
    sizes = save_pruned(tmp_path, pruned, plan)
    assert set(sizes) == {WEIGHTS_FILE, SPARSE_WEIGHTS_FILE}
    assert sizes == {name: (tmp_path / name).stat().st_size for name in sizes}
    assert sizes[SPARSE_WEIGHTS_FILE] < 0.7 * sizes[WEIGHTS_FILE]
    stored = load_sparse(tmp_path / SPARSE_WEIGHTS_FILE)
    assert stored.keys() == pruned.state_dict().keys()
    assert all(torch.equal(stored[k], v) for k, v in pruned.state_dict().items())
    loaded, loaded_plan = load_pruned(tmp_path)
    assert loaded_plan == plan
    assert same_outputs(loaded, pruned, torch.randn(4, 1, 8, 8))
    assert sparsity.nonzero_parameters(loaded) == plan.params_after == space.count(pruned)[1]


# -- 3. N:M sparsity -----------------------------------------------------------------------------

def test_nm_dimensions_are_the_eligible_layers() -> None:
    space = make_space("resnet20", 12, kinds=("nm",))
    # conv1 sees 1 channel x 3x3 = 9 inputs per output, not a multiple of 4; fc is the classifier.
    eligible = [info.name for info in space.layers if info.name not in ("conv1", "fc")]
    assert [d.name for d in space.dimensions] == eligible
    for d in space.dimensions:
        assert (d.granularity, d.units, d.min_kept, d.max_ratio, d.binary) == ("nm", 4, 2, 0.5, True)


def test_nm_uniform_half_makes_every_dimension_two_of_four() -> None:
    space = make_space("resnet20", 12, kinds=("nm",))
    ratios = space.uniform(0.5)
    assert set(ratios.values()) == {0.5}
    pruned = space.apply(ratios)
    halved = 0
    for d in space.dimensions:
        weight = layer(pruned, d.name).weight
        assert sparsity.is_nm_sparse(weight, 2, 4), d.name
        assert int(torch.count_nonzero(weight)) * 2 == weight.numel(), d.name
        halved += weight.numel() // 2
    assert zeros(pruned, "conv1") == zeros(pruned, "fc") == 0
    assert space.cost(ratios) == space.count(pruned) == (space.flops, space.params - halved)
    assert space.cost(space.uniform(0.2)) == (space.flops, space.params)  # below half the maximum: off


def test_one_of_four_round_trips_through_artifacts(tmp_path: Path) -> None:
    space = make_space("resnet20", 12, kinds=("nm",), nm=(1, 4))
    assert {d.max_ratio for d in space.dimensions} == {0.75}
    ratios = {d.name: (0.75 if i % 2 else 0.0) for i, d in enumerate(space.dimensions)}
    pruned = sparsity.make_permanent(space.apply(ratios))
    for i, d in enumerate(space.dimensions):
        assert sparsity.is_nm_sparse(layer(pruned, d.name).weight, 1, 4) == bool(i % 2), d.name
    plan = space.plan(ratios, pruned)
    sizes = save_pruned(tmp_path, pruned, plan)
    assert sizes[SPARSE_WEIGHTS_FILE] < sizes[WEIGHTS_FILE]
    loaded, _ = load_pruned(tmp_path)
    assert same_outputs(loaded, pruned, torch.randn(2, 1, 12, 12))


# -- 4. attention heads and transformer blocks (vit_tiny) ----------------------------------------

def test_vit_attention_modules_are_head_dimensions() -> None:
    space = vit_space()
    heads = [d for d in space.dimensions if d.granularity == "head"]
    assert [d.name for d in heads] == [f"blocks.{i}.attn" for i in range(6)]
    for i, d in enumerate(heads):
        assert (d.units, d.unit_out, d.unit_in) == (4, 3 * 16, 16)
        assert d.members == (f"blocks.{i}.attn.qkv",) and d.consumers == (f"blocks.{i}.attn.proj",)


def test_pruning_two_heads_removes_them_exactly() -> None:
    space = vit_space()
    ratios = {"blocks.1.attn": 0.5}
    assert space.kept_for(ratios)["blocks.1.attn"] == 2
    pruned = space.apply(ratios)
    attn = pruned.get_submodule("blocks.1.attn")
    qkv, proj = layer(pruned, "blocks.1.attn.qkv"), layer(pruned, "blocks.1.attn.proj")
    assert attn.num_heads == 2 and pruned.get_submodule("blocks.0.attn").num_heads == 4
    assert qkv.out_features == qkv.weight.shape[0] == 3 * 2 * 16
    assert proj.in_features == proj.weight.shape[1] == 2 * 16
    assert space.cost(ratios) == space.count(pruned)
    shapes = space.layer_shapes(space.kept_for(ratios))
    actual = io_channels(pruned)
    assert all(s is not None and (s[0], s[1]) == actual[name] for name, s in shapes.items())
    # The kept heads are whole heads of the base: removing the others equals silencing them in proj.
    base_qkv = layer(space.base, "blocks.1.attn.qkv").weight.view(3, 4, 16, 64)
    kept_rows = qkv.weight.view(3, 2, 16, 64)
    kept = [h for h in range(4) if any(torch.equal(base_qkv[:, h], kept_rows[:, j]) for j in range(2))]
    assert len(kept) == 2
    silenced = copy.deepcopy(space.base)
    with torch.no_grad():
        for h in set(range(4)) - set(kept):
            layer(silenced, "blocks.1.attn.proj").weight[:, h * 16:(h + 1) * 16] = 0
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), silenced(x), atol=1e-5, rtol=0)


def test_pruned_vit_rebuilds_and_round_trips(tmp_path: Path) -> None:
    space = vit_space()
    ratios = {"blocks.1.attn": 0.5, "blocks.3.attn": 0.25, "blocks.0.mlp.fc1": 0.5}
    pruned = space.apply(ratios)
    plan = space.plan(ratios, pruned)
    fresh = build_model(space.identity)
    rebuilt = space.rebuild(fresh, plan)
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert same_outputs(rebuilt, pruned, x)
    save_pruned(tmp_path, pruned, plan)
    loaded, _ = load_pruned(tmp_path)
    assert same_outputs(loaded, pruned, x)
    assert loaded.get_submodule("blocks.3.attn").num_heads == 3


def test_vit_blocks_and_heads_combine(tmp_path: Path) -> None:
    space = vit_space(kinds=("channel", "block"))
    blocks = [d for d in space.dimensions if d.granularity == "block"]
    assert [d.name for d in blocks] == [f"blocks.{i}" for i in range(6)]
    assert blocks[0].covers == ("blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2")
    ratios = {"blocks.1.attn": 0.5, "blocks.2": 1.0, "blocks.4": 1.0, "blocks.4.attn": 0.5}
    pruned = space.apply(ratios)
    assert space.cost(ratios) == space.count(pruned)
    shapes = space.layer_shapes(space.kept_for(ratios))
    assert {n for n, s in shapes.items() if s is None} == covers(space, ("blocks.2", "blocks.4"))
    x = torch.randn(2, 1, 28, 28)
    assert pruned(x).shape == (2, 10)
    save_pruned(tmp_path, pruned, space.plan(ratios, pruned))
    loaded, plan = load_pruned(tmp_path)
    assert plan.kept["blocks.2"] == 0 and plan.kept["blocks.1.attn"] == 2
    assert same_outputs(loaded, pruned, x)


@pytest.mark.parametrize("kinds", [("channel", "block"), ("unstructured",)])
def test_plan_made_with_keep_layers_loads_back(kinds: tuple[str, ...], tmp_path: Path) -> None:
    """keep_layers removes dimensions; the artifact must still rebuild (a job's `keep_layers` field)."""
    space = make_space("resnet20", 8, kinds=kinds, keep_layers=["layer2.1.conv1"])
    assert "layer2.1.conv1" not in {d.name for d in space.dimensions}
    ratios = {**space.uniform(0.5), **({"layer1.1": 1.0} if "block" in kinds else {})}
    pruned = space.apply(ratios)
    if space.sparse:
        sparsity.make_permanent(pruned)
    save_pruned(tmp_path, pruned, space.plan(ratios, pruned))
    loaded, _ = load_pruned(tmp_path)
    assert same_outputs(loaded, pruned, torch.randn(2, 1, 8, 8))


# -- 5. the job spec -----------------------------------------------------------------------------

PARAMS = {"metric": "params", "target": 0.5}


@pytest.mark.parametrize(("overrides", "field"), [
    ({"dimensions": ["unstructured", "channel"], "budget": PARAMS}, "dimensions"),
    ({"dimensions": ["nm", "block"], "budget": PARAMS}, "dimensions"),
    ({"dimensions": ["layer"]}, "dimensions"),
    ({"dimensions": []}, "dimensions"),
    ({"dimensions": ["unstructured"], "criterion": "bn_scale", "budget": PARAMS}, "criterion"),
    ({"dimensions": ["channel"], "criterion": "wanda"}, "criterion"),
    ({"dimensions": ["channel", "block"], "criterion": "magnitude"}, "criterion"),
    ({"dimensions": ["unstructured"], "budget": {"metric": "latency_ms", "target": 0.5}}, "budget.metric"),
    ({"dimensions": ["unstructured"], "budget": {"metric": "flops", "target": 0.5}}, "budget.metric"),
    ({"dimensions": ["nm"], "budget": {"metric": "flops", "target": 0.5}}, "budget.metric"),
    ({"dimensions": ["nm"], "nm": "4:2", "budget": PARAMS}, "nm"),
    ({"dimensions": ["nm"], "nm": "2:2", "budget": PARAMS}, "nm"),
    ({"dimensions": ["nm"], "nm": "2-4", "budget": PARAMS}, "nm"),
])
def test_spec_names_the_field_of_a_bad_combination(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=rf"(^|\W){field}\b"):
        parse_spec(job_dict(**overrides))


def test_spec_accepts_the_valid_combinations() -> None:
    spec = parse_spec(job_dict(dimensions=["nm"], nm="2:4", budget=PARAMS))
    assert spec.dimensions == ["nm"] and spec.nm_pair == (2, 4)
    spec = parse_spec(job_dict(dimensions=["unstructured"], criterion="wanda", budget=PARAMS))
    assert spec.criterion == "wanda"
    spec = parse_spec(job_dict(dimensions=["channel", "block", "channel", "block"]))
    assert spec.dimensions == ["channel", "block"]  # duplicates collapsed, order kept
    assert parse_spec(job_dict()).dimensions == ["channel"]


def test_space_refuses_what_the_spec_refuses() -> None:
    with pytest.raises(SpaceError, match="dimensions"):
        make_space("resnet20", 8, kinds=("unstructured", "block"))
    with pytest.raises(SpaceError, match="criterion"):
        make_space("small_cnn", 8, kinds=("unstructured",), criterion="fpgm")
    with pytest.raises(SpaceError, match="criterion: 'wanda' needs calibration"):
        make_space("small_cnn", 8, kinds=("unstructured",), criterion="wanda")


# -- 6. every agent on the new kinds --------------------------------------------------------------

# Sensitivity must scan up to 0.8: a 0.5 size budget with the classifier dense is out of reach at 0.6.
FAST = {**FAST_STRATEGIES, "sensitivity": {"ratios": [0.4, 0.8], "threshold_steps": 6}}
RECIPE = AccuracyRecipe(recalibration_batches=1, batch_size=64, val_limit=32)


@pytest.fixture(scope="module")
def data8() -> DataSplits:
    return synthetic_splits(1, 8, n=64)


@pytest.fixture(scope="module")
def resnet8_depth() -> PruningSpace:
    return make_space("resnet20", 8, kinds=("channel", "block"), round_to=8)


def search(name: str, space: PruningSpace, budget: Budget, data: DataSplits, tmp_path: Path) -> SearchOutcome:
    ctx = SearchContext(space, budget, 0, workdir=tmp_path)
    evaluator = LocalEvaluator(space, data, budget, RECIPE, None)
    return run_search(make_agent(name, ctx, FAST[name]), evaluator, lambda event: None)


def block_ratios(history: list[Evaluation], space: PruningSpace) -> set[float]:
    return {r for e in history for n, r in e.candidate.ratios.items() if space.dimension(n).binary}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agents_search_channels_and_blocks(name: str, resnet8_depth: PruningSpace, data8: DataSplits,
                                           tmp_path: Path) -> None:
    space = resnet8_depth
    budget = Budget("flops", 0.6 * space.flops, float(space.flops))
    outcome = search(name, space, budget, data8, tmp_path)
    best = outcome.best
    assert best is not None and best.meets_budget
    assert space.cost(best.candidate.ratios)[0] <= budget.limit
    blocks = [d.name for d in space.dimensions if d.binary]
    for e in outcome.history:
        kept = space.kept_for(e.candidate.ratios)
        assert all(kept[b] in (0, 1) for b in blocks)
        assert (e.flops, e.params) == space.cost(e.candidate.ratios)  # what the agents plan on is what counts
    if name != "amc":  # AMC's actor asks floats, which the space switches at half the maximum
        assert block_ratios(outcome.history, space) <= {0.0, 1.0}
    if name == "sensitivity":  # a block is scanned once, switched on
        scans = [e.candidate.ratios for e in outcome.history if e.candidate.tag.get("group") in blocks]
        assert sorted(next(iter(r)) for r in scans) == sorted(blocks) and all(r == {next(iter(r)): 1.0}
                                                                               for r in scans)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agents_search_unstructured_sparsity(name: str, data8: DataSplits, tmp_path: Path) -> None:
    space = sparse_space("l1")
    budget = Budget("params", 0.5 * space.params, float(space.params))
    outcome = search(name, space, budget, data8, tmp_path)
    best = outcome.best
    assert best is not None and best.meets_budget
    assert best.params <= budget.limit and space.cost(best.candidate.ratios)[1] <= budget.limit
    assert sparsity.nonzero_parameters(space.apply(best.candidate.ratios)) <= budget.limit
    assert all(e.flops == space.flops for e in outcome.history)  # zeros buy size, not MACs
    assert all((e.flops, e.params) == space.cost(e.candidate.ratios) for e in outcome.history)


@pytest.mark.parametrize("kinds", [("block",), ("nm",)])
def test_global_refuses_a_space_of_on_off_dimensions(kinds: tuple[str, ...]) -> None:
    space = make_space("resnet20", 8, kinds=kinds)
    assert all(d.binary for d in space.dimensions)
    budget = Budget("params", 0.9 * space.params, float(space.params))
    with pytest.raises(ValueError, match="strategy"):
        make_agent("global", SearchContext(space, budget, 0), {"steps": 3})


# -- 7. one job end to end ------------------------------------------------------------------------

@pytest.mark.slow
def test_unstructured_job_end_to_end(tmp_path: Path) -> None:
    spec = parse_spec(job_dict(dimensions=["unstructured"], budget=PARAMS, strategy={"name": "uniform", "steps": 5}))
    result = run_job(spec, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert report["budget_met"] is True
    assert report["dimensions"] == {"kinds": ["unstructured"]}
    sizes = report["size_bytes"]
    assert set(sizes) == {WEIGHTS_FILE, SPARSE_WEIGHTS_FILE}
    assert sizes[SPARSE_WEIGHTS_FILE] < sizes[WEIGHTS_FILE]
    assert sizes == {name: (tmp_path / name).stat().st_size for name in sizes}
    assert report["pruned"]["flops"] == report["base"]["flops"]
    limit = 0.5 * report["base"]["params"]
    assert report["pruned"]["params"] <= limit
    loaded, plan = load_pruned(tmp_path)
    assert plan == result.plan and all(g.granularity == "unstructured" for g in plan.groups)
    assert sparsity.nonzero_parameters(loaded) == report["pruned"]["params"] <= limit
    assert same_outputs(loaded, result.model, torch.randn(3, 1, 8, 8))


@pytest.mark.slow
def test_nm_job_reports_the_pattern_and_that_it_is_not_accelerated(tmp_path: Path) -> None:
    spec = parse_spec(job_dict(dimensions=["nm"], budget={"metric": "params", "target": 0.6},
                               strategy={"name": "sensitivity", "ratios": [0.5], "threshold_steps": 6}))
    report = run_job(spec, tmp_path).report
    assert report["budget_met"] is True
    assert report["dimensions"]["kinds"] == ["nm"] and report["dimensions"]["nm"] == "2:4"
    assert report["dimensions"]["accelerated"] is False
    loaded, plan = load_pruned(tmp_path)
    on = [g.name for g in plan.groups if g.kept < g.units]
    assert on and all(sparsity.is_nm_sparse(layer(loaded, n).weight, 2, 4) for n in on)
    assert sparsity.nonzero_parameters(loaded) <= 0.6 * report["base"]["params"]
