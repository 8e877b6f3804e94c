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


def save_figures(run_dir: Path, model: MaskedAutoEncoder, images: Tensor, *, caption: str, seed: int) -> None:
    """Write ``loss.png`` from ``metrics.jsonl`` and ``reconstructions.png`` of ``images`` (B, C, H, W), normalised."""
    steps, losses = loss_history(read_metrics(run_dir / "metrics.jsonl"))
    if steps:
        loss_curve_figure(steps, losses, path=run_dir / LOSS_FIGURE, title=f"Training loss ({run_dir.name})")
    # A fixed generator: the same patches are hidden in every figure of this run, so figures compare.
    generator = torch.Generator().manual_seed(seed)
    reconstruction_figure(
        model, images.to(model.device), mean=IMAGENET_MEAN, std=IMAGENET_STD, generator=generator,
        path=run_dir / RECONSTRUCTION_FIGURE, title=caption,
    )
