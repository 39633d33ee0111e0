"""A tiny Vision Transformer (Dosovitskiy et al. 2021) that trains on 28-32 px images on a CPU.

Attribute names follow timm (`patch_embed`, `pos_embed`, `blocks`, `norm1`/`attn`/`norm2`/`mlp`,
`qkv`/`proj`, `fc1`/`act`/`fc2`, `norm`, `head`) so the same pruning code fits timm models.
Two choices keep Torch-Pruning's channel coupling simple:

* no class token: tokens are mean-pooled, so the embedding dim couples only the patch embedding,
  the positional embedding, every residual stream layer and the head;
* attention heads are flattened with `reshape(B, N, -1)`, not a fixed width, so removing a head
  (its q, k and v rows in `qkv` and its columns in `proj`, then `num_heads -= 1`) keeps it runnable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def default_patch_size(input_size: int) -> int:
    """The patch for the finest 8x8, 4x4 or 2x2 token grid that tiles the image: 7 for 28 px, 4 for 32 px.

    At most 64 tokens keep attention cheap on a CPU; a square power-of-two grid keeps patches equal.
    """
    for grid in (8, 4, 2):
        if input_size % grid == 0:
            return input_size // grid
    raise ValueError(f"input_size {input_size} has no 8x8, 4x4 or 2x2 patch grid; pass patch_size explicitly")


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # head_dim is derived from qkv's width so pruning channels within every head also stays runnable.
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; both sub-layers are residual, so the whole block can be bypassed."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                 patch_size: int | None = None, dim: int = 64, depth: int = 6, num_heads: int = 4,
                 mlp_ratio: float = 2.0) -> None:
        super().__init__()
        p = default_patch_size(input_size) if patch_size is None else patch_size
        if p < 1 or input_size % p != 0:
            raise ValueError(f"patch_size {p} does not tile input_size {input_size}")
        tokens = (input_size // p) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, p, stride=p)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))
