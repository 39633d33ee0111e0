"""The tiny ViT in the zoo (and how Torch-Pruning shrinks it) and depth pruning of residual blocks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from search_spaces.depth import block_layers, bypassable_blocks, drop_blocks
from search_spaces.zoo import build_model
from search_spaces.zoo.resnet_cifar import CifarResNet
from search_spaces.zoo.small_cnn import SmallCNN
from search_spaces.zoo.vit import Block, VisionTransformer
from tests.conftest import identity, trained_like

RESNET20_BYPASSABLE = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def vit(input_size: int = 28) -> VisionTransformer:
    return VisionTransformer(10, 1, input_size).eval()


def block(model: VisionTransformer, i: int) -> Block:
    found = model.blocks[i]
    assert isinstance(found, Block)
    return found


def vit_graph(model: VisionTransformer, x: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=x, unwrapped_parameters=[(model.pos_embed, 2)])


# -- the zoo's ViT -----------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "patch", "tokens"), [(28, 7, 16), (32, 4, 64), (16, 2, 64)])
def test_vit_default_patch_tiles_the_image(size: int, patch: int, tokens: int) -> None:
    model = vit(size)
    assert model.patch_embed.kernel_size == (patch, patch) == model.patch_embed.stride
    assert model.pos_embed.shape == (1, tokens, 64)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_vit_rejects_patches_that_do_not_tile() -> None:
    with pytest.raises(ValueError, match="input_size 27"):
        VisionTransformer(input_size=27)
    with pytest.raises(ValueError, match="input_size 28"):
        VisionTransformer(input_size=28, patch_size=5)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 16)])
def test_vit_tiny_is_a_builtin(channels: int, size: int) -> None:
    model = build_model(identity("vit_tiny", channels, size).model_copy(update={"num_classes": 7}))
    assert isinstance(model, VisionTransformer)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("head", [0, 2])
def test_torch_pruning_removes_one_attention_head(head: int) -> None:
    model, x = vit(), torch.randn(2, 1, 28, 28)
    reference = copy.deepcopy(model)
    attn, dim = block(model, 1).attn, 64
    hd = attn.head_dim
    with torch.no_grad():  # a head whose output never reaches proj is the same as no head
        block(reference, 1).attn.proj.weight[:, head * hd:(head + 1) * hd] = 0
    assert not torch.allclose(reference(x), model(x), atol=1e-5)

    idxs = [part * dim + head * hd + i for part in range(3) for i in range(hd)]  # its q, k and v rows
    vit_graph(model, x).get_pruning_group(attn.qkv, tp.prune_linear_out_channels, idxs).prune()
    attn.num_heads -= 1
    # Torch-Pruning maps the 3*hd qkv rows onto proj unchanged: the out-of-range indices are ignored,
    # so the right hd columns go, but it subtracts 3*hd from `in_features`; code that prunes heads
    # must restore it from the weight (cost tables read `in_features`).
    assert attn.proj.weight.shape == (dim, dim - hd)
    attn.proj.in_features = attn.proj.weight.shape[1]
    assert attn.qkv.out_features == attn.qkv.weight.shape[0] == 3 * (dim - hd)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


def test_torch_pruning_shrinks_mlp_width_and_embedding_dim() -> None:
    model, x = vit(), torch.randn(2, 1, 28, 28)
    graph = vit_graph(model, x)
    mlp = block(model, 0).mlp
    graph.get_pruning_group(mlp.fc1, tp.prune_linear_out_channels, list(range(16))).prune()
    assert (mlp.fc1.out_features, mlp.fc2.in_features, tuple(mlp.fc2.weight.shape)) == (112, 112, (64, 112))
    assert model(x).shape == (2, 10)

    graph = vit_graph(model, x)
    graph.get_pruning_group(model.patch_embed, tp.prune_conv_out_channels, list(range(8))).prune()
    assert model.pos_embed.shape == (1, 16, 56)
    for b in (block(model, i) for i in range(6)):
        assert b.norm1.normalized_shape == b.norm2.normalized_shape == (56,)
        assert b.attn.qkv.in_features == b.attn.proj.out_features == b.mlp.fc2.out_features == 56
    assert model.head.in_features == model.head.weight.shape[1] == 56
    assert model(x).shape == (2, 10)


# -- depth pruning ---------------------------------------------------------------------------

def test_resnet20_blocks_with_identity_shortcuts_are_bypassable() -> None:
    assert bypassable_blocks(CifarResNet(20, 10, 1), torch.randn(4, 1, 28, 28)) == RESNET20_BYPASSABLE


def test_every_vit_block_is_bypassable() -> None:
    assert bypassable_blocks(vit(), torch.randn(4, 1, 28, 28)) == [f"blocks.{i}" for i in range(6)]


def test_a_model_without_residual_blocks_has_none() -> None:
    assert bypassable_blocks(SmallCNN(10, 1), torch.randn(2, 1, 8, 8)) == []


def test_search_leaves_training_mode_and_batchnorm_statistics_alone() -> None:
    model = CifarResNet(20, 10, 1).train()
    before = copy.deepcopy(model.state_dict())
    bypassable_blocks(model, torch.randn(4, 1, 28, 28))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("model", "size"), [(CifarResNet(20, 10, 1), 28), (VisionTransformer(10, 1, 28), 28)])
def test_dropping_every_bypassable_block_keeps_the_model_runnable(model: nn.Module, size: int) -> None:
    x = torch.randn(2, 1, size, size)
    names = bypassable_blocks(model, x)
    assert drop_blocks(model, names) is model
    assert all(isinstance(model.get_submodule(n), nn.Identity) for n in names)
    assert model(x).shape == (2, 10)
    assert bypassable_blocks(model, x) == []


@pytest.mark.parametrize("name", ["layer1.0", "layer2.2", "layer3.2"])
def test_dropping_a_resnet_block_equals_zeroing_its_residual_branch(name: str) -> None:
    model, x = trained_like(CifarResNet(20, 10, 1)), torch.randn(4, 1, 28, 28)
    reference = copy.deepcopy(model)
    bn2 = reference.get_submodule(f"{name}.bn2")
    assert isinstance(bn2, nn.BatchNorm2d)
    nn.init.zeros_(bn2.weight)
    nn.init.zeros_(bn2.bias)  # then f(x) = 0 and relu(0 + x) = x, as x comes out of a ReLU
    with torch.no_grad():
        assert not torch.equal(model(x), reference(x))
        assert torch.equal(drop_blocks(model, [name])(x), reference(x))


def test_dropping_a_vit_block_equals_zeroing_both_residual_branches() -> None:
    model, x = vit(), torch.randn(2, 1, 28, 28)
    reference = copy.deepcopy(model)
    for layer in (block(reference, 3).attn.proj, block(reference, 3).mlp.fc2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    with torch.no_grad():
        assert torch.equal(drop_blocks(model, ["blocks.3"])(x), reference(x))


def test_block_layers_name_the_conv_and_linear_layers_inside() -> None:
    resnet = CifarResNet(20, 10, 1)
    assert block_layers(resnet, "layer1.0") == ["layer1.0.conv1", "layer1.0.conv2"]
    assert block_layers(resnet, "layer2.0") == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.shortcut.0"]
    assert block_layers(vit(), "blocks.1") == ["blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc1",
                                               "blocks.1.mlp.fc2"]


def test_unknown_block_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="layer9"):
        drop_blocks(CifarResNet(20, 10, 1), ["layer9.0"])
    with pytest.raises(ValueError, match="layer9"):
        block_layers(CifarResNet(20, 10, 1), "layer9.0")


# -- blocks from torchvision and timm, matched by class name and module (neither is imported) ----

def foreign(cls: type[nn.Module], name: str, module: str) -> type[nn.Module]:
    cls.__name__, cls.__qualname__, cls.__module__ = name, name, module
    return cls


class Residual(nn.Module):
    def __init__(self, inner: nn.Module | None = None, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.inner = inner
        self.downsample = downsample  # torchvision's name; only whether it is None matters here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.inner is None else self.inner(x)
        return x + self.fc(x)


TimmBlock = foreign(type("TimmBlock", (Residual,), {}), "Block", "timm.models.vision_transformer")
ShrinkingTimmBlock = foreign(type("Shrinking", (Residual,), {"forward": lambda self, x: self.fc(x)[:, :4]}),
                             "Block", "timm.models.fake")
TorchvisionBlock = foreign(type("TvBlock", (Residual,), {}), "BasicBlock", "torchvision.models.resnet")
NotTorchvisionBlock = foreign(type("Other", (Residual,), {}), "BasicBlock", "mypackage.resnet")


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.late = TimmBlock()  # registered before `early`, called after it
        self.early = TorchvisionBlock()
        self.projected = TorchvisionBlock(downsample=nn.Identity())  # any downsample path is not the identity
        self.nested = TimmBlock(inner=TimmBlock())
        self.other = NotTorchvisionBlock()
        self.shrinking = ShrinkingTimmBlock()
        self.unused = TimmBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projected(self.late(self.early(x)))
        return self.shrinking(self.other(self.nested(x)))


def test_foreign_blocks_need_the_structure_and_a_shape_preserving_call() -> None:
    assert bypassable_blocks(Mixed(), torch.randn(3, 8)) == ["early", "late", "nested"]
