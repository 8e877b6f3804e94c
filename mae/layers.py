"""Building blocks: patch embedding and the pre-norm ViT block (attention + MLP).

Parameter names match timm's VisionTransformer and the MAE release (``patch_embed.proj``, ``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``, ``norm1``, ``norm2``), so weights move between them without renaming.
Every layer takes ``device=None, dtype=None`` and forwards them to torch. Layers trust their inputs: the model checks
what a user passes in, once, at its boundary (``mae.model``).

Shape legend: B batch, N tokens, M selected rows, D width, h heads, d = D // h head width, C channels, L patches.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import to_pair
from .functional import gather_tokens

__all__ = ["PatchEmbedding", "Attention", "Mlp", "Block", "LayerNorm", "attention", "explicit_attention"]

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

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16, in_chans: int = 3,
                 embed_dim: int = 768, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__()
        self.img_size, self.patch_size = to_pair(img_size, "img_size"), to_pair(patch_size, "patch_size")
        (H, W), (ph, pw) = self.img_size, self.patch_size
        assert H % ph == 0 and W % pw == 0, f"img_size ({H}, {W}) is not a multiple of patch_size ({ph}, {pw})"
        self.grid_size = (H // ph, W // pw)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != self.img_size:  # the conv would cut a different grid without a word
            raise ValueError(f"x has size {tuple(x.shape[-2:])} but the layer expects img_size={self.img_size}")
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, L, D)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """The same projection applied to already-cut patches: (B, N, ph * pw * C) -> (B, N, D).

        A stride-p convolution is a linear map of each patch, so ``embed_patches(patchify(imgs))`` equals
        ``forward(imgs)``, and embedding after masking equals the paper's embed-then-mask. The MAE encoder uses this
        to embed only the visible patches (a quarter of the work at mask ratio 0.75). The patch vectors are in
        ``patchify`` order (row, column, channel); the conv weight is (D, C, ph, pw).
        """
        w = self.proj.weight
        weight = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # (D, ph * pw * C) in (p q c) order
        return F.linear(patches, weight, self.proj.bias)  # (B, N, D)


# Above this many keys the explicit kernel's (N, M) score matrix costs more than SDPA's tiling saves
# (``python benchmarks/bench.py --attention``).
CPU_BF16_EXPLICIT_MAX_KEYS = 384


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, h, N, d) queries and (B, h, M, d) keys/values -> (B, h, N, d).

    One function, two kernels chosen by a fixed rule: PyTorch's SDPA everywhere, except bfloat16 on the CPU with at
    most ``CPU_BF16_EXPLICIT_MAX_KEYS`` keys, where two batched matmuls and a softmax beat SDPA's kernels (forward +
    backward; the numbers: ``python benchmarks/bench.py --attention``). The softmax of a bf16 tensor accumulates in
    float32 internally, so both kernels compute the same function within bf16 rounding.
    """
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and k.shape[-2] <= CPU_BF16_EXPLICIT_MAX_KEYS:
        return explicit_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d); scale 1/sqrt(d)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The textbook kernel: two batched matmuls and a softmax over the full (N, M) score matrix."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, h, N, M)
    return scores.softmax(dim=-1) @ v  # (B, h, N, d)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (with bias); the kernel is ``attention``'s (SDPA, or the
    explicit product for short bf16 sequences on the CPU)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim={dim} must be divisible by num_heads={num_heads}"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Self-attention over the N tokens of ``x`` (B, N, D) -> (B, N, D).

        ``rows`` (B, M) asks for the output at those token rows only -> (B, M, D): every token still serves as a key
        and value, only the M queries (and the output projection) are computed, like nanoGPT asking its head for the
        last position only. ``forward(x, rows)`` equals ``forward(x)`` gathered at ``rows``.
        """
        B, N, D = x.shape
        h, d = self.num_heads, self.head_dim
        if rows is None:
            # One fused (3D, D) matmul for all of q, k, v (measured faster than three on the CPU).
            q, k, v = self.qkv(x).reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d)
        else:
            w_q, w_kv = self.qkv.weight.split([D, 2 * D])  # fused qkv rows are ordered [q; k; v]
            b_q, b_kv = self.qkv.bias.split([D, 2 * D]) if self.qkv.bias is not None else (None, None)
            k, v = F.linear(x, w_kv, b_kv).reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
            q = F.linear(gather_tokens(x, rows), w_q, b_q).reshape(B, -1, h, d).transpose(1, 2)  # (B, h, M, d)
        x = attention(q, k, v)  # (B, h, M, d), M = N without rows
        return self.proj(x.transpose(1, 2).reshape(B, -1, D))  # (B, M, D)


class Mlp(nn.Module):
    """Two linear layers with an exact (erf) GELU between them."""

    def __init__(self, in_features: int, hidden_features: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm1 = LayerNorm(dim, **factory)
        self.attn = Attention(dim, num_heads, qkv_bias, **factory)
        self.norm2 = LayerNorm(dim, **factory)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **factory)

    def forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """(B, N, D) -> (B, N, D); with ``rows`` (B, M), the output at those token rows only: (B, M, D).

        Every token is still a key and value for the attention, so the result equals ``forward(x)`` gathered at
        ``rows``; the queries and the MLP run on M rows. MAE training asks the last decoder block for the removed
        patches only, the rows its loss reads (Sec. 3).
        """
        shortcut = x if rows is None else gather_tokens(x, rows)  # (B, M, D)
        x = shortcut + self.attn(self.norm1(x), rows)
        return x + self.mlp(self.norm2(x))
