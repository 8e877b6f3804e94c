"""Export the pretrained encoder to timm's ``VisionTransformer`` for fine-tuning or linear probing.

The encoder's parameter names are timm's, so the weights move over without renaming. Two poolings:

* ``global_pool="avg"`` (MAE fine-tuning, docs/evaluation.md): mean of the patch tokens, then a new LayerNorm
  (``fc_norm``, freshly initialised) and the head. timm then drops the encoder's final ``norm`` (``forward_features``
  returns the block outputs un-normalised), exactly as the MAE fine-tuning code does.
* ``global_pool="token"`` (linear probing): the cls token after the encoder's pretrained ``norm``; here
  ``forward_features`` equals ``MaskedAutoEncoder.forward_features``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .._checks import to_pair
from ..model import MaskedAutoEncoder
from .load import load_pretrained
from .pos_embed import adapt_pos_embed

__all__ = ["to_timm"]

_ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


def to_timm(
    source: MaskedAutoEncoder | str | os.PathLike | Mapping[str, Any],
    *,
    global_pool: str = "avg",
    num_classes: int = 0,
    img_size: int | tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **timm_kwargs: Any,
) -> VisionTransformer:
    """A timm ``VisionTransformer`` carrying the MAE encoder's weights.

    Args:
        source: a ``MaskedAutoEncoder``, or anything ``mae.from_pretrained`` reads (for files
            whose heads cannot be inferred, load the model first and pass it).
        global_pool: ``"avg"`` (mean of patch tokens + new ``fc_norm``, as MAE fine-tuning) or ``"token"`` (cls).
        num_classes: 0 (default) for no head (``forward`` returns pooled features); else a new Linear head,
            initialised as MAE fine-tuning does (trunc-normal std 2e-5, zero bias).
        img_size: build for another input size (H or (H, W)); the position table is regenerated (sin-cos) or
            resized bicubically (learned). Default: the model's.
        device, dtype: where and in which floating type to build the timm model.
        **timm_kwargs: passed to ``VisionTransformer`` (e.g. ``drop_path_rate=0.1`` for fine-tuning).
    """
    if global_pool not in ("avg", "token"):
        raise ValueError(f"global_pool must be 'avg' (MAE fine-tuning) or 'token' (cls token), got {global_pool!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int (0 = no head), got {num_classes!r}")
    model = source if isinstance(source, MaskedAutoEncoder) else load_pretrained(source)[0]
    cfg = model.config
    img_size = cfg.img_size if img_size is None else to_pair(img_size, "img_size")

    vit = VisionTransformer(
        img_size=img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=num_classes,
        global_pool=global_pool,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        fc_norm=global_pool == "avg",
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # the MAE value; timm's own default is 1e-5
        device=device,
        dtype=dtype,
        **timm_kwargs,
    )
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith(_ENCODER_PREFIXES)}
    if global_pool == "avg":
        # Fine-tuning pools the un-normalised tokens and learns a new fc_norm; the pretrained norm goes unused.
        encoder = {k: v for k, v in encoder.items() if not k.startswith("norm.")}
    encoder["pos_embed"], _ = adapt_pos_embed(encoder["pos_embed"], cfg.grid_size, vit.patch_embed.grid_size)

    new = set(vit.state_dict()) - set(encoder)
    expected_new = {k for k in vit.state_dict() if k.startswith(("fc_norm.", "head."))}
    if new != expected_new:
        raise RuntimeError(f"timm's VisionTransformer does not match the encoder: keys {sorted(new - expected_new)}")
    with torch.no_grad():
        vit.load_state_dict(encoder, strict=False)
        if isinstance(vit.fc_norm, nn.LayerNorm):
            nn.init.ones_(vit.fc_norm.weight)
            nn.init.zeros_(vit.fc_norm.bias)
        if isinstance(vit.head, nn.Linear):
            nn.init.trunc_normal_(vit.head.weight, std=2e-5)
            nn.init.zeros_(vit.head.bias)
    return vit
