"""Pictures of what an MAE reconstructs, and of how its loss fell.

    >>> from mae import IMAGENET_MEAN, IMAGENET_STD
    >>> from mae.visualize import reconstruction_figure
    >>> fig = reconstruction_figure(model, imgs, mean=IMAGENET_MEAN, std=IMAGENET_STD, path="runs/x/recon.png")

One row per image, four columns: the original, the masked input the encoder sees, the decoder's reconstruction of
every patch, and the reconstruction with the visible patches pasted back (the paper's Fig. 2-4 show the last one).

Shape legend: B batch, C channels, H/W image size, L patches, P = ph * pw * C pixels per patch.
Mask convention: 1 = removed (masked), 0 = kept (visible).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through ``pyplot``: nothing global is
touched (no backend switch, no figure registry), so this is safe in headless CI, in training loops and in notebooks
(``display(fig)`` shows it).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._checks import check_bool, check_positive_int, check_str
from .config import IMAGENET_MEAN, IMAGENET_STD
from .functional import patch_mean_std
from .io.atomic import atomic_write
from .model import MaskedAutoEncoder

if TYPE_CHECKING:  # matplotlib is optional (the train extra): imported where a figure is made
    from matplotlib.figure import Figure

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Reconstruction",
    "reconstruct",
    "reconstruction_figure",
    "loss_curve_figure",
]


class Reconstruction(NamedTuple):
    """Every field is a float32 (B, C, H, W) CPU tensor in the model's input (normalised) space, except ``mask``."""

    original: Tensor  # (B, C, H, W) the input images
    masked: Tensor  # (B, C, H, W) the input with removed patches set to 0 (the dataset mean once de-normalised)
    reconstruction: Tensor  # (B, C, H, W) the decoder's prediction for every patch, in pixel space
    pasted: Tensor  # (B, C, H, W) original at visible patches, reconstruction at removed ones
    mask: Tensor  # (B, 1, H, W) 1 = removed, 0 = visible, constant over each patch


def _unwrap(model: Any) -> MaskedAutoEncoder:
    """The model itself, or the one inside a DDP (``.module``) or torch.compile (``._orig_mod``) wrapper."""
    inner = model
    for attr in ("module", "_orig_mod"):
        if not isinstance(inner, MaskedAutoEncoder) and isinstance(getattr(inner, attr, None), torch.nn.Module):
            inner = getattr(inner, attr)
    if not isinstance(inner, MaskedAutoEncoder):
        raise TypeError(f"model must be a mae.MaskedAutoEncoder (or a DDP / compiled wrapper of one), got "
                        f"{type(model).__name__}")
    return inner


def _denormalize_patches(pred: Tensor, target: Tensor) -> Tensor:
    """Invert ``functional.normalize_patches`` using the statistics of the TRUE patches.

    A norm_pix_loss model predicts (t - mean_t) / sqrt(var_t + eps) for each patch t, so its output has no absolute
    brightness or contrast; to draw it we borrow each patch's own mean and unbiased variance from the target image.
    This leaks two numbers per removed patch from the ground truth into the picture, which the figure title says.

    Args:
        pred: (B, L, P) predicted normalised patches.
        target: (B, L, P) true patches (``patchify(imgs)``).

    Returns:
        (B, L, P) predicted patches in pixel space.
    """
    mean, std = patch_mean_std(target.float())  # (B, L, 1) each: the loss's own statistics and eps
    return pred.float() * std + mean


@torch.no_grad()
def reconstruct(
    model: MaskedAutoEncoder,
    imgs: Tensor,
    *,
    mask_ratio: float | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Reconstruction:
    """Mask, encode and decode a batch, and return the four images of the reconstruction figure as tensors.

    The model runs in eval mode for the call; its previous mode (of every submodule) is restored afterwards, also
    when the call fails. Inputs are checked by the model's own ``encoder`` (type, shape, channels, size, device).

    Args:
        model: a ``MaskedAutoEncoder`` on any device (DDP and torch.compile wrappers are unwrapped).
        imgs: (B, C, H, W) floating-point images, normalised as in training, on the model's device.
        mask_ratio: fraction of patches removed; defaults to ``model.config.mask_ratio``. 0 removes nothing.
        noise: optional (B, L) noise fixing the masking (small = keep), on the model's device.
        generator: optional ``torch.Generator`` to draw the masking noise from.

    Returns:
        ``Reconstruction`` of float32 CPU tensors in the input space. For norm_pix_loss models ``reconstruction``
        is de-normalised patch by patch with the mean and std of the same patch of ``imgs``.
    """
    net = _unwrap(model)
    # Remember every submodule's flag, not just the top one: a caller may have frozen parts in eval mode on purpose.
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        latent, mask, ids_restore = net.encoder(imgs, mask_ratio, noise=noise, generator=generator)
        pred = net.decoder(latent, ids_restore)  # (B, L, P)
    finally:
        for m, was_training in modes:
            m.training = was_training

    if net.config.norm_pix_loss:
        pred = _denormalize_patches(pred, net.patchify(imgs))  # (B, L, P)
    B, L, P = pred.shape
    recon = net.unpatchify(pred.float())  # (B, C, H, W)
    # Spread each patch's mask value over its pixels with the model's own unpatchify (works for any grid shape).
    mask_px = net.unpatchify(mask.float().unsqueeze(-1).expand(B, L, P))[:, :1]  # (B, 1, H, W)
    removed = mask_px.bool()

    original = imgs.detach().float()
    masked = torch.where(removed, torch.zeros_like(original), original)  # (B, C, H, W)
    # torch.where (not a blend) so visible pixels are bit-identical to the input even if the prediction is inf/nan.
    pasted = torch.where(removed, recon, original)  # (B, C, H, W)
    return Reconstruction(*(t.cpu() for t in (original, masked, recon, pasted, mask_px)))


def _channel_vector(values: Any, name: str, channels: int) -> Tensor:
    """Per-channel sequence -> (1, C, 1, 1) float tensor, or a clear error."""
    try:
        vec = torch.as_tensor(values, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a sequence of {channels} numbers (one per channel), got {values!r}") from err
    if vec.ndim != 1 or vec.numel() != channels:
        raise ValueError(
            f"{name} must have one value per image channel (length {channels}), got {values!r} "
            f"with shape {tuple(vec.shape)}"
        )
    if not bool(torch.isfinite(vec).all()):
        raise ValueError(f"{name} must be finite, got {values!r}")
    return vec.view(1, channels, 1, 1)


def _channel_note(channels: int) -> str | None:
    """What the display does with channel counts that are neither grey nor RGB (documented in the title)."""
    if channels == 4:
        return "4-channel images: channels 0-2 shown as RGB, channel 3 not shown"
    if channels not in (1, 3):
        return f"{channels}-channel images: channel 0 shown in grey"
    return None


def _to_display(x: Tensor) -> np.ndarray:
    """(B, C, H, W) pixels in [0, 1] space -> numpy (B, H, W, 3) for C >= 3 (first 3 channels), else (B, H, W)."""
    x = x.clamp(0.0, 1.0)
    if x.shape[1] == 3 or x.shape[1] == 4:
        return x[:, :3].permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return x[:, 0].numpy()  # (B, H, W) grey


def _save_png_atomic(fig: Figure, path: str | os.PathLike[str], dpi: int) -> Path:
    """Write the figure as PNG to a temp file beside ``path``, then rename: a reader never sees a half-written file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path must be a file path for the PNG, got the existing directory {str(path)!r}")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # the core package does not need matplotlib; only figures do
        raise ImportError("mae.visualize's figures need matplotlib (>= 3.8): pip install 'mae-pytorch[train]' "
                          "or pip install matplotlib") from err
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attach an Agg canvas to this figure only; the global backend is left alone
    return fig


def reconstruction_figure(
    model: MaskedAutoEncoder,
    imgs: Tensor,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    mask_ratio: float | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    max_images: int = 8,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Figure:
    """Grid of original / masked / prediction / prediction with the visible patches pasted back, one row per image.

    The prediction column shows the decoder's output everywhere, and says that its visible positions are untrained
    (the loss covers removed patches only); the last column is what the paper's figures show.

    Args:
        model: a ``MaskedAutoEncoder`` on any device; its train/eval mode is restored afterwards.
        imgs: (B, C, H, W) images as the model takes them (normalised), on the model's device.
        mean, std: the per-channel normalisation of ``imgs`` (length C each, e.g. ``IMAGENET_MEAN``/``IMAGENET_STD``),
            undone for display as ``x * std + mean``. None: pixel values are shown as given, clipped to [0, 1].
        mask_ratio, noise, generator: the masking, as in ``reconstruct``. ``noise`` covers the first ``max_images``
            images (pass (min(B, max_images), L) or (B, L)).
        max_images: at most this many rows (the first images of the batch).
        path: if given, the figure is saved there as PNG (parent folders created, written atomically).
        title: first line of the figure title; notes on norm_pix_loss and channel display are added below it.
        dpi: resolution of the saved PNG.

    Returns:
        The ``matplotlib.figure.Figure`` (Agg canvas, not registered with pyplot).

    Display choices: 1 channel is grey; 3 are RGB; 4 show channels 0-2 as RGB; any other count shows channel 0 in
    grey. Removed patches in the "masked" column are 0 in the input space, i.e. the dataset mean colour when
    ``mean``/``std`` are given (as in the paper's figures), black otherwise.
    """
    max_images, dpi = check_positive_int(max_images, "max_images"), check_positive_int(dpi, "dpi")
    title = None if title is None else check_str(title, "title")
    if (mean is None) != (std is None):
        raise ValueError(f"pass both mean and std to undo the input normalisation, or neither; got mean={mean!r}, "
                         f"std={std!r}")
    net = _unwrap(model)
    C = net.config.in_chans
    # Check the display arguments before any compute, so a typo fails fast.
    mean_v = std_v = None
    if mean is not None:
        mean_v = _channel_vector(mean, "mean", C)
        std_v = _channel_vector(std, "std", C)
        if not bool((std_v > 0).all()):
            raise ValueError(f"std must be positive in every channel, got {std!r}")

    # Only the rows we draw are reconstructed; a noise tensor for the whole batch is cut the same way.
    if isinstance(imgs, Tensor) and imgs.ndim == 4:
        if isinstance(noise, Tensor) and noise.ndim == 2 and noise.shape[0] == imgs.shape[0]:
            noise = noise[:max_images]
        imgs = imgs[:max_images]
    rec = reconstruct(net, imgs, mask_ratio=mask_ratio, noise=noise, generator=generator)

    columns = [rec.original, rec.masked, rec.reconstruction, rec.pasted]
    if mean_v is not None:
        columns = [x * std_v + mean_v for x in columns]
    panels = [_to_display(x) for x in columns]
    grey = panels[0].ndim == 3

    B, _, H, W = rec.original.shape
    removed = float(rec.mask.mean())
    headers = ["original", f"masked ({removed:.0%} removed)", "prediction (visible: untrained)",
               "reconstruction + visible"]
    notes = [title or "MAE reconstructions",
             "The loss covers the removed patches only (Sec. 3), so the predictions at visible positions are never "
             "trained; the last column pastes the visible patches back, as the paper's figures do"]
    if net.config.norm_pix_loss:
        notes.append("norm_pix_loss model: each predicted patch is de-normalised with the mean and std of the same "
                     "patch of the original image (so its brightness and contrast come from the original)")
    if (note := _channel_note(C)) is not None:
        notes.append(note)
    if mean_v is None:
        notes.append("no mean/std given: values shown as-is, clipped to [0, 1]")

    cell = 2.0  # inches per image width; the height follows the image's aspect ratio
    n_title_lines = sum(len(textwrap.wrap(n, 90)) for n in notes)
    fig = _new_figure(4 * cell, B * cell * H / W + 0.35 + 0.2 * n_title_lines)
    axes = fig.subplots(B, 4, squeeze=False)
    for row in range(B):
        for col in range(4):
            ax = axes[row, col]
            if grey:
                ax.imshow(panels[col][row], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(panels[col][row], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(headers[col], fontsize=9)
    fig.suptitle("\n".join(textwrap.fill(n, 90) for n in notes), fontsize=9)
    if path is not None:
        _save_png_atomic(fig, path, dpi)
    return fig


def _as_1d(values: Any, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {type(values).__name__}") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def loss_curve_figure(
    steps: Sequence[float] | Tensor | np.ndarray,
    losses: Sequence[float] | Tensor | np.ndarray,
    *,
    path: str | os.PathLike[str] | None = None,
    title: str = "Training loss",
    log_y: bool = True,
    dpi: int = 100,
) -> Figure:
    """Loss against step, with a moving average over noisy per-step values.

    Args:
        steps: x values (optimiser steps, epochs, ...), same length as ``losses``.
        losses: loss values. Non-finite values (a diverged step) are left out of the plot and counted in the title.
        path: if given, saved there as PNG (parent folders created, written atomically).
        title: figure title.
        log_y: log-scale y axis (used only when every plotted loss is > 0; otherwise linear).
        dpi: resolution of the saved PNG.

    Returns:
        The ``matplotlib.figure.Figure`` (Agg canvas, not registered with pyplot).
    """
    x, y = _as_1d(steps, "steps"), _as_1d(losses, "losses")
    if len(x) != len(y):
        raise ValueError(f"steps and losses must have the same length, got {len(x)} and {len(y)}")
    dpi, title, log_y = check_positive_int(dpi, "dpi"), check_str(title, "title"), check_bool(log_y, "log_y")
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        raise ValueError(f"losses has no finite value to plot (got {len(y)} values)")
    dropped = int((~keep).sum())
    x, y = x[keep], y[keep]

    fig = _new_figure(6.0, 3.6)
    ax = fig.subplots()
    window = len(y) // 20  # about 20 independent points along the curve
    if window >= 2:
        ax.plot(x, y, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(x[window - 1:], smooth, color="tab:blue", linewidth=1.6, label=f"mean of last {window}")
        ax.legend(fontsize=8)
    else:
        ax.plot(x, y, color="tab:blue", marker="o" if len(y) < 30 else None, markersize=3, linewidth=1.4)
    if log_y and bool((y > 0).all()):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    full_title = title if not dropped else f"{title} ({dropped} non-finite value{'s' * (dropped > 1)} not shown)"
    ax.set_title(full_title, fontsize=10)
    if path is not None:
        _save_png_atomic(fig, path, dpi)
    return fig
