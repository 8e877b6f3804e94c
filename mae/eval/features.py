"""Features of a frozen MAE encoder: pooled features, intermediate layers, and attention maps of the last block.

All functions run the encoder on every patch (no masking), in the order ``MaskedAutoEncoder.forward_features`` does:
patch embedding + position table, cls token prepended, blocks, final norm. They take a batch of normalised images
(B, C, H, W) and leave the model unchanged.

Shape legend: B batch, L patches, D width, h heads, (gh, gw) the patch grid, N = 1 + L tokens (cls first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..model import MaskedAutoEncoder

__all__ = ["POOLS", "attention_maps", "cls_attention", "intermediate_layers", "pool_tokens", "pooled_features"]

POOLS = ("cls", "mean")


def pool_tokens(tokens: Tensor, pool: str) -> Tensor:
    """(B, 1+L, D) -> (B, D): the cls token (``"cls"``) or the mean of the patch tokens (``"mean"``, cls excluded)."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "mean":
        return tokens[:, 1:].mean(dim=1)
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


@torch.no_grad()
def pooled_features(model: MaskedAutoEncoder, imgs: Tensor, pool: str = "cls") -> Tensor:
    """One feature vector per image, after the encoder's final norm: (B, C, H, W) -> (B, D).

    ``pool="cls"`` is the linear probe's feature (paper Sec. A.2); ``"mean"`` averages the patch tokens.
    """
    return pool_tokens(model.forward_features(imgs), pool)


def _tokens(model: MaskedAutoEncoder, imgs: Tensor) -> Tensor:
    """Input of the first block: cls + all patch tokens with their positions, (B, 1+L, D)."""
    model._check_images(imgs)
    x = model.patch_embed(imgs) + model.pos_embed[:, 1:]  # (B, L, D)
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
    return torch.cat([cls, x], dim=1)  # (B, 1+L, D)


@torch.no_grad()
def intermediate_layers(
    model: MaskedAutoEncoder, imgs: Tensor, layers: int | Sequence[int] = 1, *, norm: bool = True
) -> list[Tensor]:
    """Token outputs of some encoder blocks, each (B, 1+L, D).

    Args:
        layers: an int n for the last n blocks, or block indices (0-based; negative counts from the end).
        norm: apply the encoder's final LayerNorm to each output (the last block's normed output then equals
            ``forward_features``).

    Returns:
        One tensor per requested block, in block order.
    """
    depth = len(model.blocks)
    if isinstance(layers, int) and not isinstance(layers, bool):
        if not 1 <= layers <= depth:
            raise ValueError(f"layers={layers} asks for the last {layers} blocks, but the encoder has {depth}")
        wanted = set(range(depth - layers, depth))
    else:
        wanted = set()
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or not -depth <= i < depth:
                raise ValueError(f"layers must hold block indices in [-{depth}, {depth}), got {list(layers)!r}")
            wanted.add(i % depth)
    x, out = _tokens(model, imgs), []
    for i, block in enumerate(model.blocks):
        x = block(x)  # (B, 1+L, D)
        if i in wanted:
            out.append(model.norm(x) if norm else x)
    return out


@torch.no_grad()
def attention_maps(model: MaskedAutoEncoder, imgs: Tensor) -> Tensor:
    """Per-head attention probabilities of the last encoder block: (B, C, H, W) -> (B, h, 1+L, 1+L).

    Row i holds where token i looks (cls is token 0); rows sum to 1. Computed from the block's own ``norm1`` and
    ``attn.qkv`` weights: softmax(q k^T / sqrt(d)), the same function the block's attention kernel evaluates.
    """
    x = _tokens(model, imgs)
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    B, N, D = x.shape
    h = last.attn.num_heads
    qkv = last.attn.qkv(last.norm1(x)).reshape(B, N, 3, h, D // h)  # (B, N, 3, h, d)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, N, d)
    scores = (q.float() @ k.float().transpose(-2, -1)) * (D // h) ** -0.5  # (B, h, N, N)
    return scores.softmax(dim=-1)


def cls_attention(model: MaskedAutoEncoder, imgs: Tensor) -> Tensor:
    """How the cls token of the last block attends to each patch, as images: (B, h, gh, gw), each map sums to 1
    over the patches and the cls token together (the cls-to-cls weight is left out)."""
    gh, gw = model.config.grid_size
    maps = attention_maps(model, imgs)[:, :, 0, 1:]  # (B, h, L)
    return maps.reshape(*maps.shape[:2], gh, gw)  # (B, h, gh, gw)
