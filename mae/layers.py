"""Building blocks: patch embedding and the pre-norm ViT block (attention + MLP).

Parameter names match timm's VisionTransformer and the MAE release (``patch_embed.proj``, ``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``, ``norm1``, ``norm2``), so weights move between them without renaming.
Every layer takes ``device=None, dtype=None`` and creates its parameters there.

Shape legend: B batch, N tokens, D width, h heads, d = D // h head width, C channels, L patches.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import to_pair

__all__ = ["PatchEmbedding", "Attention", "Mlp", "Block", "LayerNorm"]

# The release code uses LayerNorm with eps 1e-6 everywhere (timm's ViT default is 1e-5: mind the difference).
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class PatchEmbedding(nn.Module):
    """Split an image into non-overlapping patches and project each to width D with one strided convolution.

    Args:
        img_size: H or (H, W) of the expected input.
        patch_size: p or (ph, pw).
        in_chans: image channels C.
        embed_dim: output width D.

    Input (B, C, H, W) -> output (B, L, D), tokens row-major over the (gh, gw) grid.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.img_size = to_pair(img_size, "img_size")
        self.patch_size = to_pair(patch_size, "patch_size")
        (H, W), (ph, pw) = self.img_size, self.patch_size
        if H % ph or W % pw:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        self.grid_size = (H // ph, W // pw)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if (H, W) != self.img_size:
            raise ValueError(f"input image size ({H}, {W}) does not match the model's img_size {self.img_size}")
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, L, D)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (with bias) and PyTorch's SDPA kernel."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d); scale 1/sqrt(d)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj(x)


class Mlp(nn.Module):
    """Two linear layers with an exact (erf) GELU between them."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). LayerNorm eps 1e-6."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm1 = LayerNorm(dim, **factory)
        self.attn = Attention(dim, num_heads, qkv_bias, **factory)
        self.norm2 = LayerNorm(dim, **factory)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **factory)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
