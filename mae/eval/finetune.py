"""End-to-end fine-tuning with the authors' recipe (docs/evaluation.md), on timm's VisionTransformer.

The encoder is exported to timm (``to_timm``): mean of the patch tokens (cls excluded) + a new LayerNorm ``fc_norm``
(the final ``norm`` is dropped) + a linear head (trunc-normal std 2e-5); drop path 0.1 / 0.2 / 0.3 for B / L / H.
Layer-wise lr decay with the paper's layer ids: cls token, position table and patch embedding are layer 0, block i is
layer i + 1, everything else (fc_norm, head) is layer depth + 1; each parameter's lr is lr x decay^(depth + 1 - id).
No weight decay on 1-D parameters, the position table and the cls token. AdamW (0.9, 0.999), weight decay 0.05,
per-iteration warm-up (5 epochs) then cosine to 1e-6. timm's pieces are used where they are exactly the authors':
``create_transform`` (RandAugment m9, random erasing 0.25), ``Mixup`` (mixup 0.8, cutmix 1.0, switch 0.5, label
smoothing 0.1) and ``SoftTargetCrossEntropy``. The layer ids are ours (timm's ``param_groups_layer_decay`` gives the
same with average pooling, tested), because they must follow the paper's formula whatever the pooling.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..io.timm import to_timm
from ..model import MaskedAutoEncoder
from .config import FinetuneConfig
from .data import eval_transform, finetune_train_transform, load_data
from .run import Run

__all__ = ["build_finetune_model", "finetune", "layer_id", "param_groups_layer_decay"]

_EMBEDDING = ("cls_token", "pos_embed", "patch_embed.")
_NO_DECAY = ("cls_token", "pos_embed")


def layer_id(name: str, depth: int) -> int:
    """The paper's layer id of a parameter: embeddings 0, ``blocks.i.*`` i + 1, everything else depth + 1."""
    if name.startswith(_EMBEDDING):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups_layer_decay(
    model: nn.Module, *, weight_decay: float = 0.05, layer_decay: float = 0.75, depth: int | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups with per-layer ``lr_scale`` = layer_decay^(depth + 1 - layer_id).

    Args:
        model: a ViT with timm's / MAE's parameter names (``blocks.i.``, ``cls_token``, ``pos_embed``, ...).
        weight_decay: for parameters with more than one dimension, except ``pos_embed`` and ``cls_token``.
        layer_decay: decay per layer, 1.0 for none.
        depth: number of blocks (default: ``len(model.blocks)``).

    Returns:
        Groups ``{"params", "weight_decay", "lr_scale", "layer_id", "param_names"}``, one per (layer, decay) pair;
        frozen parameters are left out.
    """
    depth = len(model.blocks) if depth is None else depth
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        decay = p.ndim > 1 and name not in _NO_DECAY
        group = groups.setdefault((lid, decay), {
            "params": [], "param_names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - lid), "layer_id": lid,
        })
        group["params"].append(p)
        group["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_finetune_model(
    encoder: MaskedAutoEncoder, num_classes: int, *, drop_path: float = 0.1, device: Any = None
) -> VisionTransformer:
    """The encoder as a timm ViT with average pooling, a new ``fc_norm`` and a head (trunc-normal std 2e-5)."""
    return to_timm(encoder, global_pool="avg", num_classes=num_classes, drop_path_rate=drop_path, device=device)


def finetune(
    config: FinetuneConfig, *, encoder: MaskedAutoEncoder | None = None, resume: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Fine-tune and return the results (also written to ``<run>/results.json``).

    Args:
        config: the run; ``config.checkpoint`` or ``config.model`` names the encoder unless ``encoder`` is given.
        encoder: an in-memory ``MaskedAutoEncoder`` to start from instead.
        resume: a run folder (or its ``checkpoint.pt``) to continue.
    """
    return Run.execute(config, resume, _run, encoder)


def _run(run: Run, given: MaskedAutoEncoder | None) -> dict[str, Any]:
    cfg = run.config
    encoder, source = run.load_encoder(given, on_device=False)  # moved to the device as a timm model
    img_size = encoder.config.img_size[0]
    data = load_data(cfg.data, img_size)
    cfg = cfg.resolve(encoder.config.embed_dim, len(data.train))
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise ValueError(f"batch_size must be even with mixup/cutmix (pairs are mixed), got {cfg.batch_size}")
    auto_augment = None if cfg.auto_augment.lower() == "none" else cfg.auto_augment
    data.transformed(finetune_train_transform(img_size, auto_augment, cfg.reprob),
                     eval_transform(img_size, cfg.crop_pct))
    run.begin(cfg, data, {"encoder": source})

    torch.manual_seed(cfg.seed)  # the new head and fc_norm
    model = build_finetune_model(encoder, data.num_classes, drop_path=cfg.drop_path).to(run.device)
    groups = param_groups_layer_decay(model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    for g in groups:
        del g["param_names"]  # keep the optimizer state plain
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=1.0, switch_prob=cfg.mixup_switch_prob,
                      mode="batch", label_smoothing=cfg.smoothing, num_classes=data.num_classes)
        loss_fn = SoftTargetCrossEntropy()  # targets are the mixed, smoothed label distributions
    elif cfg.smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()
    results = run.fit(model, optimizer, data.train, data.val, loss_fn=loss_fn, batch_transform=mixup)
    return run.finish({**results, "num_classes": data.num_classes, "encoder": source,
                       "layer_decay": cfg.layer_decay, "drop_path": cfg.drop_path})
