"""The two pictures every run leaves behind: the loss curve and a reconstruction grid."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..model import MaskedAutoEncoder
from ..visualize import loss_curve_figure, reconstruction_figure
from .metrics import loss_history, read_metrics

__all__ = ["LOSS_FIGURE", "RECONSTRUCTION_FIGURE", "save_figures"]

LOSS_FIGURE, RECONSTRUCTION_FIGURE = "loss.png", "reconstructions.png"


def save_figures(run_dir: Path, model: MaskedAutoEncoder, images: Tensor, *, caption: str, seed: int,
                 noise: Tensor | None = None) -> None:
    """Write ``loss.png`` from ``metrics.jsonl`` and ``reconstructions.png`` of ``images`` (B, C, H, W), normalised.

    ``noise`` (B, L): the masking to draw (e.g. the held-out batch's, so the figure shows the patches that were
    scored); None: masks drawn from a generator seeded with ``seed``, the same in every figure of this run.
    """
    steps, losses = loss_history(read_metrics(run_dir / "metrics.jsonl"))
    if steps:
        loss_curve_figure(steps, losses, path=run_dir / LOSS_FIGURE, title=f"Training loss ({run_dir.name})")
    masking = {"generator": torch.Generator().manual_seed(seed)} if noise is None else {"noise": noise.to(model.device)}
    reconstruction_figure(
        model, images.to(model.device), mean=IMAGENET_MEAN, std=IMAGENET_STD, **masking,
        path=run_dir / RECONSTRUCTION_FIGURE, title=caption,
    )
