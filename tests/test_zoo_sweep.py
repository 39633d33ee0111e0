"""A zoo sweep: tiny networks with every coupling users bring, pruned end to end.

Each architecture is registered as an operator factory (`factory:<name>`, as a user's model is),
its space is built through the preflight as a job builds it, and three uniform plans are applied.
Every pruned model must run with the right output shape, round-trip bit for bit through
`save_pruned`/`load_pruned`, export to ONNX, and cost what the cost model says. Where a layer cannot
be pruned, the preflight must exclude it with a reason, never raise from inside Torch-Pruning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.artifacts import export_onnx, load_pruned, save_pruned
from search_spaces.kinds import WIDTH
from search_spaces.layers import count_cost
from search_spaces.plan import ModelIdentity
from search_spaces.preflight import checked_space
from search_spaces.space import PruningSpace
from search_spaces.zoo import build_model
from tests.conftest import trained_like

pytestmark = pytest.mark.slow  # every architecture pruned, rebuilt and exported

IN_CHANNELS, SIZE, CLASSES = 3, 8, 5


def _cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Head(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """Two branches of different widths concatenated (Inception/DenseNet coupling)."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.a, self.b = _cbr(in_channels, 8), _cbr(in_channels, 12, k=1)
        self.mix = _cbr(20, 16)
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(torch.cat([self.a(x), self.b(x)], dim=1)))


class ResidualNet(nn.Module):
    """Residual adds: the stem and both blocks' last convs share one channel group."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16)
        self.blocks = nn.ModuleList(nn.Sequential(_cbr(16, 8), nn.Conv2d(8, 16, 3, padding=1)) for _ in range(2))
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.head(x)


class SENet(nn.Module):
    """Squeeze-excite: features multiplied by a per-channel sigmoid gate computed from themselves."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.conv = _cbr(in_channels, 16)
        self.squeeze, self.excite = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.out = _cbr(16, 16)
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3), keepdim=True)))))
        return self.head(self.out(x * gate))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNet(nn.Module):
    """ShuffleNet-v2 units: split the channels, transform one half, concat, shuffle."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16)
        self.units = nn.ModuleList(nn.Sequential(_cbr(8, 8, k=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                                 nn.BatchNorm2d(8), _cbr(8, 8, k=1)) for _ in range(2))
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for unit in self.units:
            keep, work = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat([keep, unit(work)], dim=1), 2)
        return self.head(x)


def tv_channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's shuffle (view, transpose, contiguous, view with -1): Torch-Pruning's index
    mapping raises ZeroDivisionError on it while building the dependency graph."""
    b, c, h, w = x.size()
    x = torch.transpose(x.view(b, groups, c // groups, h, w), 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 unit: stride 2 runs both branches on the input, stride 1 splits it."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, half = stride, cout // 2
        self.branch1 = nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                     _cbr(cin, half, k=1)) if stride > 1 else nn.Sequential()
        self.branch2 = nn.Sequential(_cbr(cin if stride > 1 else half, half, k=1),
                                     nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
                                     nn.BatchNorm2d(half), _cbr(half, half, k=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, work = x.chunk(2, dim=1)
            out = torch.cat((keep, self.branch2(work)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return tv_channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 8)
        self.stage = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1), ShuffleUnit(16, 16, 1))
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)))


class FlattenNet(nn.Module):
    """A classifier on flattened feature maps: each channel feeds h*w inputs of the linear layer."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.conv = _cbr(in_channels, 8, k=3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(8 * 4, 24), nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(self.pool(self.conv(x)), 1))))


class SharedNet(nn.Module):
    """One conv module called twice (weights shared across depth)."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 12)
        self.shared = nn.Conv2d(12, 12, 3, padding=1)
        self.head = Head(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.shared(x))
        return self.head(F.relu(self.shared(x)))


class NormNet(nn.Module):
    """GroupNorm (4 groups) and a ConvNeXt-style LayerNorm over channels (channels-last permute)."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.conv1, self.gn = nn.Conv2d(in_channels, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.conv2, self.ln = nn.Conv2d(16, 16, 3, padding=1), nn.LayerNorm(16)
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn(self.conv1(x)))
        x = self.ln(self.conv2(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(F.gelu(x))


class ResNeXtNet(nn.Module):
    """ResNeXt bottlenecks: a grouped 3x3 conv (groups=2, then 4) between 1x1 convs, residual add."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16)
        self.blocks = nn.ModuleList(nn.Sequential(_cbr(16, 16, k=1), _cbr(16, 16, groups=g),
                                                  nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)) for g in (2, 4))
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.head(x)


class GroupedChainNet(nn.Module):
    """Grouped convs feeding grouped convs: groups=4 then groups=2, then a GroupNorm(2)."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16)
        self.g4 = _cbr(16, 24, groups=4)
        self.g2 = nn.Conv2d(24, 16, 3, padding=1, groups=2)
        self.gn = nn.GroupNorm(2, 16)
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.gn(self.g2(self.g4(self.stem(x))))))


class DepthwiseNet(nn.Module):
    """MobileNetV2 inverted residuals: expand, depthwise 3x3, project, add."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 8)
        self.blocks = nn.ModuleList(nn.Sequential(_cbr(8, 24, k=1), _cbr(24, 24, groups=24), nn.Conv2d(24, 8, 1),
                                                  nn.BatchNorm2d(8)) for _ in range(2))
        self.head = Head(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class MultiplierNet(nn.Module):
    """A depthwise conv with a channel multiplier (groups = in_channels, out = 2 x in): its input
    channels cannot shrink without removing whole groups, so the stem is excluded."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 8)
        self.dw = _cbr(8, 16, groups=8)
        self.pw = _cbr(16, 16, k=1)
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.dw(self.stem(x))))


class ConcatGroupedNet(nn.Module):
    """Two branches concatenated into a groups=2 conv whose groups straddle the branch boundary
    (widths 4 + 12): each branch's channels reach the groups unevenly, so both are excluded."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.a, self.b = _cbr(in_channels, 4), _cbr(in_channels, 12)
        self.g = _cbr(16, 16, groups=2)
        self.head = Head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.g(torch.cat([self.a(x), self.b(x)], dim=1)))


class MHANet(nn.Module):
    """Patch tokens through nn.MultiheadAttention (2 heads) and an MLP, with LayerNorm."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, 16, 2, stride=2)
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        h = self.norm(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.mlp(t)
        return self.fc(t.mean(dim=1))


class QKVAttention(nn.Module):
    """timm's attention layout: one fused qkv projection, heads reshaped from `num_heads`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class QKVNet(nn.Module):
    """A one-block ViT with timm-style attention (4 heads of 8): heads are a searched dimension."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, 32, 2, stride=2)
        self.norm1, self.norm2 = nn.LayerNorm(32), nn.LayerNorm(32)
        self.attn = QKVAttention(32, 4)
        self.mlp = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return self.fc(t.mean(dim=1))


class WindowBlock(nn.Module):
    """A Swin block on channels-last features, as torchvision writes it: windows cut by view, permute
    and reshape, a qkv projection called through `F.linear`, heads split by reshape, then an MLP, each
    with a residual add."""

    def __init__(self, dim: int, window: int, heads: int = 2) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        t = self.norm1(x).view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        qkv = F.linear(t, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.reshape(t.size(0), t.size(1), 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        t = (F.softmax(q @ k.transpose(-2, -1), dim=-1) @ v).transpose(1, 2).reshape(t.size(0), t.size(1), c)
        t = F.linear(t, self.proj.weight, self.proj.bias)
        x = x + t.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return x + self.mlp(self.norm2(x))


class SwinNet(nn.Module):
    """Swin's layout: patch embedding, channels-last window blocks, a patch merging (four strided
    slices concatenated, LayerNorm, Linear 4C -> 2C). Torch-Pruning misreads the window reshapes'
    channel axis and, around the residual cycle, multiplies the indices without end."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, 16, 2, stride=2)
        self.block1, self.block2 = WindowBlock(16, 2), WindowBlock(32, 2)
        self.merge_norm, self.merge = nn.LayerNorm(64), nn.Linear(64, 32, bias=False)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.patch(x).permute(0, 2, 3, 1))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = self.block2(self.merge(self.merge_norm(x)))
        return self.fc(x.mean(dim=(1, 2)))


class VersionedNet(nn.Module):
    """A module that checks its state's version when loading, as torchvision's MNASNet does: a tensor
    file carries no versions, so loading must supply the model's own."""

    _version = 2

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(in_channels, 8), _cbr(8, 12))
        self.head = Head(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: dict[str, Any],
                              *args: Any) -> None:
        if local_metadata.get("version") != self._version:
            raise ValueError(f"version should be set to 2, got {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


ARCHS: dict[str, type[nn.Module]] = {
    "concat": ConcatNet, "residual": ResidualNet, "se": SENet, "shuffle": ShuffleNet, "shufflenet_v2": ShuffleNetV2,
    "flatten": FlattenNet,
    "shared": SharedNet, "norms": NormNet, "resnext": ResNeXtNet, "grouped_chain": GroupedChainNet,
    "depthwise": DepthwiseNet, "multiplier": MultiplierNet, "concat_grouped": ConcatGroupedNet, "mha": MHANet,
    "qkv": QKVNet, "versioned": VersionedNet, "swin": SwinNet,
}
FACTORIES = {name: f"tests.test_zoo_sweep:{cls.__name__}" for name, cls in ARCHS.items()}
# Layers the preflight must exclude (with a reason), per architecture.
EXCLUDED: dict[str, set[str]] = {
    "multiplier": {"stem.0"},  # feeds a depthwise conv with a channel multiplier
    "concat_grouped": {"a.0", "b.0"},  # concat into a grouped conv, groups straddling the branches
    "shuffle": {"stem.0", "units.0.3.0", "units.1.3.0"},  # the channel shuffle
    "shufflenet_v2": {"stage.0.branch1.2.0", "stage.0.branch2.3.0", "stage.1.branch2.3.0",
                      "stage.2.branch2.3.0"},  # Torch-Pruning's ZeroDivisionError at the shuffle
    "mha": {"mlp.2"},  # the embedding width: nn.MultiheadAttention keeps embed_dim and num_heads
    "swin": {"patch", "block1.mlp.2", "block2.mlp.2"},  # stage widths, through the window reshapes
}
RATIOS = (0.25, 0.5, 0.9)


def build(name: str) -> tuple[nn.Module, ModelIdentity]:
    ident = ModelIdentity(arch=f"factory:{name}", num_classes=CLASSES, in_channels=IN_CHANNELS, input_size=SIZE)
    torch.manual_seed(0)
    return trained_like(build_model(ident, FACTORIES)), ident


def space_of(name: str) -> PruningSpace:
    model, ident = build(name)
    return checked_space(model, ident, max_ratio=0.9)


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_architecture_prunes_round_trips_exports_and_costs_right(name: str, tmp_path: Path) -> None:
    space = space_of(name)
    widths = [d for d in space.dimensions if d.granularity in WIDTH]
    assert widths, f"{name}: nothing to prune"
    assert set(space.excluded) == EXCLUDED.get(name, set()), space.excluded
    assert all(reason for reason in space.excluded.values())
    x = torch.randn(3, IN_CHANNELS, SIZE, SIZE)
    for ratio in RATIOS:
        ratios = space.uniform(ratio)
        pruned = space.apply(ratios)
        assert space.kept_for(ratios) != space.kept_for({}), f"{name} at {ratio}: nothing pruned"
        with torch.no_grad():
            out = pruned(x)
        assert out.shape == (3, CLASSES)
        assert space.cost(ratios) == count_cost(pruned, space.example)
        for d in widths:  # grouped layers keep whole groups
            assert space.kept_for(ratios)[d.name] % d.channel_groups == 0
        plan = space.plan(ratios, pruned)
        assert plan.excluded == space.excluded
        folder = tmp_path / f"r{ratio}"
        save_pruned(folder, pruned, plan)
        loaded, loaded_plan = load_pruned(folder, FACTORIES)
        with torch.no_grad():
            assert torch.equal(loaded(x), out)
        assert loaded_plan == plan
        assert export_onnx(pruned, x[:1], folder / "model.onnx") is None


def test_grouped_convs_keep_their_groups_and_lose_equal_channels() -> None:
    space = space_of("resnext")
    pruned = space.apply(space.uniform(0.5))
    for name, conv in pruned.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.groups > 1:
            base = space.base.get_submodule(name)
            assert isinstance(base, nn.Conv2d)
            assert conv.groups == base.groups and conv.in_channels % conv.groups == 0
            assert conv.out_channels % conv.groups == 0 and conv.out_channels < base.out_channels


def test_channel_shuffle_excludes_only_the_shuffled_groups() -> None:
    """Torch-Pruning cannot follow a view/transpose shuffle: the groups through it go, the units'
    inner channels are still searched."""
    space = space_of("shuffle")
    inner = {d.name: d.members for d in space.dimensions}
    assert set(inner) == {"units.0.1", "units.1.1"}  # each unit's 1x1 + depthwise channels
    assert all("units.0.0.0" in m or "units.1.0.0" in m for m in inner.values())
    assert all("shuffle" in why for why in space.excluded.values())


def test_zero_division_at_a_torchvision_shuffle_excludes_the_groups_through_it() -> None:
    """Torch-Pruning's own graph build fails on this model; the space still searches the stem and
    every unit's inner branch."""
    import torch_pruning as tp

    model, _ = build("shufflenet_v2")
    with pytest.raises(ZeroDivisionError):
        tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, IN_CHANNELS, SIZE, SIZE))
    space = space_of("shufflenet_v2")
    assert [d.name for d in space.dimensions] == ["stem.0", *(f"stage.{i}.branch2.1" for i in range(3))]
    assert all("reshape" in why for why in space.excluded.values())


def test_an_index_mapping_that_outgrows_every_layer_excludes_its_group_instead_of_exhausting_memory() -> None:
    """Through Swin's window reshapes Torch-Pruning multiplies a group's indices on every turn of the
    residual cycle (swin_t was killed for memory). No layer has more channels than its widest
    parameter dimension, so a mapping past that bound refuses the group, with the reason. Here the
    flatten into fc1 (8 channels -> 32 inputs) is legitimate at the real bound and overflows one set
    below it."""
    from search_spaces.coupling import _bound_index_mappings, build_graph, searchable_groups

    model, _ = build("flatten")
    names = {m: n for n, m in model.named_modules()}
    for limit, refused in ((32, False), (16, True)):
        graph = build_graph(model, torch.zeros(1, IN_CHANNELS, SIZE, SIZE))
        _bound_index_mappings(graph, limit)
        found, why = searchable_groups(graph, [model.fc2], (nn.Conv2d, nn.Linear), names)
        assert ("conv.0" in why) is refused, why
        assert ("conv.0" in {names[c.root] for c in found}) is not refused
        if refused:
            assert "reshape" in why["conv.0"] and "more than any layer has (16)" in why["conv.0"]
