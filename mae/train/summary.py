"""What a finished run leaves to read at a glance: ``summary.json``, for the demo its held-out score, and figures.

``summary.json``: ``norm_pix_loss``, ``steps`` (optimizer steps in total), ``seconds`` (wall time of this invocation,
from building the data to the end of the last epoch) for every run; without ``--data`` also ``heldout_loss``,
``heldout_baseline_loss`` and ``heldout_ratio`` (``mae.train.heldout``: a norm_pix model's predictions are
de-normalised with the TRUE patch statistics before scoring), next to ``heldout_images.pt``: the exact normalised batch
scored, a plain (N, C, H, W) float32 tensor (``torch.load(path, weights_only=True)``), of which ``reconstructions.png``
draws the first rows with the same masks. With ``--data`` there are no held-out photographs: the summary has no
held-out fields and the figure shows training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io.atomic import atomic_write, write_json
from ..model import MaskedAutoEncoder
from .augment import NoiseSpec
from .datasets import SKIMAGE_HELD_OUT
from .figures import LOSS_FIGURE, RECONSTRUCTION_FIGURE, save_figures
from .heldout import HELDOUT_SEED, heldout_batch, heldout_scores
from .rundir import HELDOUT_IMAGES_FILE, SUMMARY_FILE

__all__ = ["finish_run", "write_summary"]


def write_summary(run_dir: Path, model: MaskedAutoEncoder, *, steps: int, seconds: float,
                  heldout: tuple[Tensor, Tensor] | None) -> dict[str, Any]:
    """Write ``summary.json`` (and, given the held-out ``(imgs, noise)``, score them and save ``imgs``); return it."""
    summary: dict[str, Any] = {"norm_pix_loss": model.config.norm_pix_loss, "steps": steps, "seconds": seconds}
    if heldout is not None:
        imgs, noise = heldout
        scores = heldout_scores(model, imgs, noise)
        summary.update(heldout_loss=scores.loss, heldout_baseline_loss=scores.baseline, heldout_ratio=scores.ratio,
                       heldout_images=len(imgs), heldout_seed=HELDOUT_SEED)
        pixels = imgs.detach().to("cpu", torch.float32).contiguous()
        atomic_write(Path(run_dir) / HELDOUT_IMAGES_FILE, lambda tmp: torch.save(pixels, tmp))
    write_json(Path(run_dir) / SUMMARY_FILE, summary)
    return summary


def finish_run(config, model: MaskedAutoEncoder, run_dir: Path, data, *, steps: int, seconds: float) -> list[str]:
    """Rank 0 at the end of a run: the summary (the demo scored on the held-out photos, issue 10), then the figures
    of the scored batch with its masks. Returns the lines to print."""
    heldout, caption, noise, lines = None, data.figure_caption, None, []
    mc = model.config
    if config.data is None:
        heldout = heldout_batch(config.img_size, NoiseSpec(mc.num_patches, mc.masking, mc.grid_size, mc.mask_ratio))
    summary = write_summary(run_dir, model, steps=steps, seconds=seconds, heldout=heldout)
    if heldout is not None:
        target = ("normalised-pixel predictions de-normalised with the true patch statistics" if mc.norm_pix_loss
                  else "pixel predictions")
        score = (f"held-out masked MSE {summary['heldout_loss']:.3f} vs mean-colour baseline "
                 f"{summary['heldout_baseline_loss']:.3f} ({summary['heldout_ratio']:.2f}x)")
        lines.append(f"{score}; {target}")
        caption, noise = f"crops of held-out photos ({', '.join(SKIMAGE_HELD_OUT)}): {score}", heldout[1]
    if config.figures:
        images = data.figure_images if heldout is None else heldout[0]
        save_figures(run_dir, model, images, caption=caption, seed=config.seed, noise=noise)
        lines.append(f"loss curve: {run_dir / LOSS_FIGURE}\nreconstructions: {run_dir / RECONSTRUCTION_FIGURE}")
    lines.append(f"run folder: {run_dir}")
    return lines
