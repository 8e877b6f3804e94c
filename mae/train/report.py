"""What a run reports: ``metrics.jsonl`` as it trains, and at the end ``summary.json``, the held-out score of the
default run, and the two figures (``loss.png``, ``reconstructions.png``).

Metrics: one JSON object per line, optionally mirrored to TensorBoard. Records carry ``"kind": "step"`` (step, epoch,
loss, lr, img_per_s) or ``"kind": "epoch"`` (the epoch summary). On resume new records are appended;
``loss_history`` keeps the latest record of each step, so a step redone after resuming from an older checkpoint
replaces the first attempt without deleting anything from the file.

Held-out score (runs on the built-in photographs): does the run learn more than colour? Its masked-patch error on
held-out photographs against a baseline that predicts every pixel of a removed patch with the mean colour of the
image's visible pixels. Both are MSEs over the removed patches in the normalised input space. A norm_pix_loss model
predicts each patch normalised by its own statistics, so its prediction is first de-normalised with the TRUE mean and
std of that patch (taken from the answer, as the reconstruction figure draws it): its score measures the shape it
predicts, with each patch's brightness and contrast given, a help the baseline does not get.

``summary.json``: ``norm_pix_loss``, ``steps``, ``seconds`` (this invocation, from building the data to the end of the
last epoch); on the built-in photographs also ``heldout_loss``, ``heldout_baseline_loss`` and ``heldout_ratio``, next
to ``heldout_images.pt``, the exact normalised batch scored, a plain (N, C, H, W) float32 tensor, of which
``reconstructions.png`` draws the first rows with the same masks. With ``--data`` the figure shows training images.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..functional import masked_mse_loss, patch_mean_std
from ..io.atomic import atomic_write, write_json
from ..model import MaskedAutoEncoder
from ..visualize import loss_curve_figure, reconstruction_figure
from .data.augment import MaskingSpec, collate_samples, normalize_on_device
from .data.datasets import SKIMAGE_HELD_OUT, PretrainSamples, skimage_photos
from .run import HELDOUT_IMAGES_FILE, METRICS_FILE, SUMMARY_FILE

__all__ = ["HELDOUT_IMAGES", "HELDOUT_SEED", "LOSS_FIGURE", "RECONSTRUCTION_FIGURE", "HeldoutScores", "MetricsLog",
           "finish_run", "heldout_batch", "heldout_scores", "loss_history", "mean_colour_prediction",
           "open_tensorboard", "pixel_scores", "predicted_patches", "read_metrics", "require_tensorboard",
           "save_figures", "write_summary"]

# ---------------------------------------------------------------------------------------------- metrics

class MetricsLog:
    """Append-only JSONL writer (a no-op on non-main processes)."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True, tensorboard_dir: str | None = None) -> None:
        self.path, self.enabled = Path(path), enabled
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115 (closed in close())
        self._tb = None
        if enabled and tensorboard_dir is not None:
            self._tb = open_tensorboard(tensorboard_dir)

    def log(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crash keeps everything logged so far
        if self._tb is not None:
            step = record.get("step", 0)
            prefix = "train" if record.get("kind") == "step" else record.get("kind", "epoch")  # epoch, eval, ...
            for key, value in record.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def require_tensorboard() -> None:
    """Fail early, before any work, when TensorBoard logging is asked for but not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError as err:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'mae-pytorch[tensorboard]'"
        ) from err


def open_tensorboard(log_dir: str | os.PathLike):
    """A TensorBoard ``SummaryWriter``, imported only when asked for."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'mae-pytorch[tensorboard]'"
        ) from err
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a metrics file, skipping a last line cut short by a crash."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def loss_history(records: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """(steps, losses) of the step records, in step order, the latest record winning for a repeated step."""
    by_step = {r["step"]: r["loss"] for r in records if r.get("kind") == "step"}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


# ---------------------------------------------------------------------------------------------- held-out score

HELDOUT_SEED = 0  # fixed, not the run's seed: every run is scored on the same crops and masks, so scores compare
HELDOUT_IMAGES = 16  # crops in the held-out batch


class HeldoutScores(NamedTuple):
    loss: float  # the model's MSE on the removed patches, in the normalised pixel space
    baseline: float  # the same for the mean-colour prediction

    @property
    def ratio(self) -> float:
        return self.loss / self.baseline


def heldout_batch(img_size: int, noise: MaskingSpec, num_images: int = HELDOUT_IMAGES) -> tuple[Tensor, Tensor]:
    """Crops of the held-out photographs (never trained on) and their masking noise, the same for every run.

    The training augmentation (random resized crop and flip, ``augment_sample``) drawn with ``HELDOUT_SEED``, epoch 0:
    varied views like the training batches, but of photographs the model has not seen.

    Args:
        img_size: side of the square crops.
        noise: the run's masking noise (``MaskingSpec``: its patch count and masking strategy).
        num_images: crops in the batch (the photographs in turn).

    Returns:
        ``(imgs (N, C, H, W) float32 normalised with the ImageNet statistics, noise (N, L))``.
    """
    photos = skimage_photos(SKIMAGE_HELD_OUT)
    repeat = -(-num_images // len(photos))  # ceil: enough samples for num_images
    samples = PretrainSamples(photos, img_size=img_size, noise=noise, seed=HELDOUT_SEED, repeat=repeat)
    pixels, masking_noise = collate_samples([samples[i] for i in range(num_images)])  # uint8 (N, C, H, W), (N, L)
    return normalize_on_device(pixels, IMAGENET_MEAN, IMAGENET_STD), masking_noise


def mean_colour_prediction(target: Tensor, mask: Tensor, in_chans: int) -> Tensor:
    """Every patch predicted by the mean colour of the image's visible pixels: (B, L, P) -> (B, L, P).

    Args:
        target: (B, L, P) patchified images; each patch vector is (row, column, channel), channel fastest.
        mask: (B, L), 1 = removed; the mean is taken over the visible (0) patches.
        in_chans: C, the channels of each pixel.
    """
    B, L, P = target.shape
    pixels = target.reshape(B, L, P // in_chans, in_chans)  # (B, L, ph * pw, C)
    visible = (1 - mask.to(target.dtype)).view(B, L, 1, 1)  # (B, L, 1, 1)
    colour = (pixels * visible).sum(dim=(1, 2)) / (visible.sum(dim=(1, 2)) * (P // in_chans))  # (B, C)
    return colour.view(B, 1, 1, in_chans).expand(B, L, P // in_chans, in_chans).reshape(B, L, P)  # (B, L, P)


@torch.no_grad()
def predicted_patches(model: MaskedAutoEncoder, imgs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The model's prediction of ``imgs`` with the masking fixed by ``noise``, in the space of ``imgs``.

    A norm_pix_loss model's prediction is de-normalised with the TRUE mean and std of each target patch
    (``patch_mean_std``): what it is scored on is the shape it predicts, brightness and contrast taken from the answer.

    Args:
        model: the model (switched to eval mode for the call and restored after).
        imgs: (B, C, H, W) normalised images, e.g. from ``heldout_batch``.
        noise: (B, L) masking noise (small = kept).

    Returns:
        ``(pred (B, L, P), target (B, L, P), mask (B, L))`` in float32, mask 1 = removed.
    """
    imgs, noise = imgs.to(model.device), noise.to(model.device)
    was_training = model.training
    model.eval()
    try:
        pred, mask = model(imgs, noise=noise)[1:]  # (B, L, P), (B, L)
    finally:
        model.train(was_training)
    target = model.patchify(imgs).float()  # (B, L, P)
    pred = pred.float()
    if model.config.norm_pix_loss:
        mean, std = patch_mean_std(target)  # (B, L, 1) each
        pred = pred * std + mean
    return pred, target, mask


@torch.no_grad()
def heldout_scores(model: MaskedAutoEncoder, imgs: Tensor, noise: Tensor) -> HeldoutScores:
    """The model's masked-patch MSE on ``imgs`` and the mean-colour baseline's, with the masking fixed by ``noise``.

    Both are MSEs over the removed patches in the normalised input space (the space of ``imgs``), the model's
    prediction as ``predicted_patches`` gives it.
    """
    pred, target, mask = predicted_patches(model, imgs, noise)
    baseline = mean_colour_prediction(target, mask, model.config.in_chans)
    return HeldoutScores(float(masked_mse_loss(pred, target, mask)),
                         float(masked_mse_loss(baseline, target, mask)))


@torch.no_grad()
def pixel_scores(model: MaskedAutoEncoder, imgs: Tensor, noise: Tensor) -> tuple[float, float]:
    """``(mse, psnr)`` of the removed patches in pixel space: values in [0, 1], peak 1, ``psnr = 10 log10(1 / mse)``.

    Prediction and target (``predicted_patches``) are de-normalised with the ImageNet mean and std of each channel;
    the prediction is clipped to [0, 1], as a figure shows it.
    """
    pred, target, mask = predicted_patches(model, imgs, noise)
    mse = float(masked_mse_loss(_to_pixels(pred).clamp(0.0, 1.0), _to_pixels(target), mask))
    return mse, 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _to_pixels(patches: Tensor) -> Tensor:
    """(B, L, P) patches of ImageNet-normalised RGB (channel fastest in each patch vector) -> pixel values."""
    B, L, P = patches.shape
    mean = torch.tensor(IMAGENET_MEAN, device=patches.device)  # (C,)
    std = torch.tensor(IMAGENET_STD, device=patches.device)  # (C,)
    return (patches.reshape(B, L, P // len(mean), len(mean)) * std + mean).reshape(B, L, P)  # (B, L, P)


# ---------------------------------------------------------------------------------------------- figures and summary

LOSS_FIGURE, RECONSTRUCTION_FIGURE = "loss.png", "reconstructions.png"


def save_figures(run_dir: Path, model: MaskedAutoEncoder, images: Tensor, *, caption: str, seed: int,
                 noise: Tensor | None = None) -> None:
    """Write ``loss.png`` from ``metrics.jsonl`` and ``reconstructions.png`` of ``images`` (B, C, H, W), normalised.

    ``noise`` (B, L): the masking to draw (e.g. the held-out batch's, so the figure shows the patches that were
    scored); None: masks drawn from a generator seeded with ``seed``, the same in every figure of this run.
    """
    steps, losses = loss_history(read_metrics(run_dir / METRICS_FILE))
    if steps:
        loss_curve_figure(steps, losses, path=run_dir / LOSS_FIGURE, title=f"Training loss ({run_dir.name})")
    masking = {"generator": torch.Generator().manual_seed(seed)} if noise is None else {"noise": noise.to(model.device)}
    reconstruction_figure(
        model, images.to(model.device), mean=IMAGENET_MEAN, std=IMAGENET_STD, **masking,
        path=run_dir / RECONSTRUCTION_FIGURE, title=caption,
    )


def write_summary(run_dir: Path, model: MaskedAutoEncoder, *, steps: int, seconds: float,
                  heldout: tuple[Tensor, Tensor] | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``summary.json`` (and, given the held-out ``(imgs, noise)``, score them and save ``imgs``); return it.
    ``extra``: more entries (the engine's divergence and online-evaluation record)."""
    summary: dict[str, Any] = {"norm_pix_loss": model.config.norm_pix_loss, "steps": steps, "seconds": seconds,
                               **(extra or {})}
    if heldout is not None:
        imgs, noise = heldout
        scores = heldout_scores(model, imgs, noise)
        summary.update(heldout_loss=scores.loss, heldout_baseline_loss=scores.baseline, heldout_ratio=scores.ratio,
                       heldout_images=len(imgs), heldout_seed=HELDOUT_SEED)
        pixels = imgs.detach().to("cpu", torch.float32).contiguous()
        atomic_write(Path(run_dir) / HELDOUT_IMAGES_FILE, lambda tmp: torch.save(pixels, tmp))
    write_json(Path(run_dir) / SUMMARY_FILE, summary)
    return summary


def finish_run(config, model: MaskedAutoEncoder, run_dir: Path, data, *, steps: int, seconds: float,
               extra: dict[str, Any] | None = None) -> list[str]:
    """Rank 0 at the end of a run: the summary (the default run scored on the held-out photos), then the figures
    of the scored batch with its masks. Returns the lines to print."""
    heldout, caption, noise, lines = None, data.figure_caption, None, []
    mc = model.config
    if config.data is None:
        heldout = heldout_batch(config.img_size, MaskingSpec.of(mc))
    summary = write_summary(run_dir, model, steps=steps, seconds=seconds, heldout=heldout, extra=extra)
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
