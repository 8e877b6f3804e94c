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

from ._checks import (
    check_bool,
    check_device,
    check_divisible,
    check_dtype,
    check_finite,
    check_fits,
    check_positive_int,
    check_tensor,
    to_pair,
)
from .functional import gather_tokens

__all__ = ["PatchEmbedding", "Attention", "Mlp", "Block", "LayerNorm", "attention", "explicit_attention"]

# The release code uses LayerNorm with eps 1e-6 everywhere (timm's ViT default is 1e-5: mind the difference).
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def _checked_factory(device: object, dtype: object, numel: int, what: str) -> tuple:
    """A layer's ``device`` and ``dtype``, checked, and its ``numel`` parameters bounded by the free memory."""
    device, dtype = check_device(device), check_dtype(dtype)
    check_fits(numel * (dtype or torch.get_default_dtype()).itemsize, what, device)
    return device, dtype


def _check_tokens(x: object, width: int, dims: str = "(B, N, D)") -> Tensor:
    """A layer's input: (B, N, width) tokens, or with ``dims="(..., D)"`` any leading dimensions."""
    check_tensor(x, "x", dims.replace("D", str(width)))
    if not (x.ndim >= 1 if dims == "(..., D)" else x.ndim == 3) or x.shape[-1] != width:
        raise ValueError(f"x must be {dims.replace('D', str(width))}, got shape {tuple(x.shape)}")
    return x


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
        check_divisible(self.img_size, self.patch_size)
        self.grid_size = (H // ph, W // pw)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans, embed_dim = check_positive_int(in_chans, "in_chans"), check_positive_int(embed_dim, "embed_dim")
        device, dtype = _checked_factory(device, dtype, embed_dim * (ph * pw * in_chans + 1),
                                         f"PatchEmbedding(in_chans={in_chans}, embed_dim={embed_dim})")
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = check_tensor(x, "x", "(B, C, H, W)", ndim=4).shape
        if (C, H, W) != (self.in_chans, *self.img_size):
            raise ValueError(f"x has {C} channels of size ({H}, {W}) but the layer expects in_chans={self.in_chans} "
                             f"and img_size={self.img_size}")
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, L, D)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """The same projection applied to already-cut patches: (B, N, ph * pw * C) -> (B, N, D).

        A stride-p convolution is a linear map of each patch, so ``embed_patches(patchify(imgs))`` equals
        ``forward(imgs)``. The MAE encoder uses this to embed only the visible patches (a quarter of the work).
        The patch vectors are in ``patchify`` order (row, column, channel); the conv weight is (D, C, ph, pw).
        """
        w = self.proj.weight
        weight = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # (D, ph * pw * C) in (p q c) order
        return F.linear(patches, weight, self.proj.bias)  # (B, N, D)


# Above this many keys the explicit kernel's (N, M) score matrix costs more than SDPA's tiling saves (measured
# crossover on an AVX-512-bf16 CPU: about 400 keys for head width 32).
CPU_BF16_EXPLICIT_MAX_KEYS = 384


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, h, N, d) queries and (B, h, M, d) keys/values -> (B, h, N, d).

    One function, two kernels chosen by a fixed rule: PyTorch's SDPA everywhere, except bfloat16 on the CPU with at
    most ``CPU_BF16_EXPLICIT_MAX_KEYS`` keys, where SDPA's kernels are 2-4x slower (forward + backward) than two
    batched matmuls and a softmax (AVX-512-bf16 CPU, ViT-B MAE at 224 px, batch 8: decoder 33.6 ms vs 13.9 ms,
    encoder 7.7 ms vs 2.0 ms; at 785 keys SDPA wins, 281 ms vs 388 ms; in float32 SDPA is the faster one:
    ``python benchmarks/bench.py --attention [--img-size 448]``). The softmax of a bf16 tensor accumulates in
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
        dim, num_heads = check_positive_int(dim, "dim"), check_positive_int(num_heads, "num_heads")
        qkv_bias = check_bool(qkv_bias, "qkv_bias")
        device, dtype = _checked_factory(device, dtype, 4 * dim * (dim + 1), f"Attention(dim={dim})")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
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
        B, N, D = _check_tokens(x, self.proj.in_features).shape
        if rows is not None and (check_tensor(rows, "rows", "(B, M)", ndim=2).shape[0] != B
                                 or rows.dtype != torch.long):
            raise ValueError(f"rows must be int64 (B, M) with B = {B}, got {rows.dtype} {tuple(rows.shape)}")
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

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_features = check_positive_int(in_features, "in_features")
        hidden_features = check_positive_int(hidden_features, "hidden_features")
        device, dtype = _checked_factory(device, dtype, 2 * in_features * (hidden_features + 1),
                                         f"Mlp(in_features={in_features}, hidden_features={hidden_features})")
        self.fc1 = nn.Linear(in_features, hidden_features, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(_check_tokens(x, self.fc1.in_features, "(..., D)"))))


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
        dim, mlp_ratio = check_positive_int(dim, "dim"), check_finite(mlp_ratio, "mlp_ratio", low=1e-6)
        if int(dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio} gives the MLP no hidden unit at dim {dim}")
        hidden = int(dim * mlp_ratio)
        numel = 4 * dim * (dim + 1) + 2 * dim * hidden + hidden + 5 * dim
        device, dtype = _checked_factory(device, dtype, numel, f"Block(dim={dim}, mlp_ratio={mlp_ratio})")
        factory = {"device": device, "dtype": dtype}
        self.norm1 = LayerNorm(dim, **factory)
        self.attn = Attention(dim, num_heads, qkv_bias, **factory)
        self.norm2 = LayerNorm(dim, **factory)
        self.mlp = Mlp(dim, hidden, **factory)

    def forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """(B, N, D) -> (B, N, D); with ``rows`` (B, M), the output at those token rows only: (B, M, D).

        Every token is still a key and value for the attention, so the result equals ``forward(x)`` gathered at
        ``rows``; the queries and the MLP run on M rows. MAE training asks the last decoder block for the removed
        patches only, the rows its loss reads (Sec. 3).
        """
        _check_tokens(x, self.norm1.normalized_shape[0])
        shortcut = x if rows is None else gather_tokens(x, rows)  # (B, M, D)
        x = shortcut + self.attn(self.norm1(x), rows)
        return x + self.mlp(self.norm2(x))
