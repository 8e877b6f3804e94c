"""AdamW with the paper's parameter groups: weight decay on matrices and tokens, none on biases and norms."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters into a decayed and a non-decayed group.

    Biases and every 1-D parameter (LayerNorm weights) get no weight decay; the cls and mask tokens (3-D) are decayed,
    as in the paper's pretraining recipe. Frozen parameters (the sin-cos position tables) never enter the optimizer.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW(betas=(0.9, 0.95)) over ``param_groups``; the fused kernel where torch has one for the model's device."""
    groups = param_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        # No fused kernel for this device/dtype in this torch build: the default (foreach) implementation is exact.
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
