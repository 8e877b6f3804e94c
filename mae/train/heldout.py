"""Does the run learn more than colour? Its masked-patch error on held-out photos against a trivial baseline.

The baseline predicts every pixel of a removed patch with the mean colour of the image's visible pixels (per image,
per channel). A model that only learned the average colour of its data scores about the baseline; the default run must
score at most half of it (issue 10). Both are MSEs over the removed patches in the normalised input space the model
sees. A norm_pix_loss model predicts each patch normalised by its own statistics, so its prediction is first
de-normalised with the TRUE mean and std of that patch (taken from the answer, as the reconstruction figure draws it):
its score measures the shape it predicts, with each patch's brightness and contrast given. That is a help the baseline
does not get: predicting zero (each removed patch's true mean) alone scores well below the baseline.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import functional as MF
from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..model import MaskedAutoEncoder
from .augment import NoiseSpec, collate_samples, normalize_on_device
from .datasets import SKIMAGE_HELD_OUT, PretrainSamples, skimage_photos

__all__ = ["HELDOUT_IMAGES", "HELDOUT_SEED", "HeldoutScores", "heldout_batch", "heldout_scores",
           "mean_colour_prediction"]

HELDOUT_SEED = 0  # fixed, not the run's seed: every run is scored on the same crops and masks, so scores compare
HELDOUT_IMAGES = 16  # crops in the held-out batch


class HeldoutScores(NamedTuple):
    loss: float  # the model's MSE on the removed patches, in the normalised pixel space
    baseline: float  # the same for the mean-colour prediction

    @property
    def ratio(self) -> float:
        return self.loss / self.baseline


def heldout_batch(img_size: int, noise: NoiseSpec, num_images: int = HELDOUT_IMAGES) -> tuple[Tensor, Tensor]:
    """Crops of the held-out photographs (never trained on) and their masking noise, the same for every run.

    The training augmentation (random resized crop and flip, ``augment_sample``) drawn with ``HELDOUT_SEED``, epoch 0:
    varied views like the training batches, but of photographs the model has not seen.

    Args:
        img_size: side of the square crops.
        noise: the run's masking noise (``NoiseSpec``: its patch count and masking strategy).
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
def heldout_scores(model: MaskedAutoEncoder, imgs: Tensor, noise: Tensor) -> HeldoutScores:
    """The model's masked-patch MSE on ``imgs`` and the mean-colour baseline's, with the masking fixed by ``noise``.

    Both are MSEs over the removed patches in the normalised input space (the space of ``imgs``). A norm_pix_loss
    model's prediction is first de-normalised with the TRUE mean and std of each target patch (``patch_mean_std``),
    so its score measures the shape it predicts, with brightness and contrast taken from the answer.

    Args:
        model: the trained model (switched to eval mode for the call and restored after).
        imgs: (B, C, H, W) normalised images, e.g. from ``heldout_batch``.
        noise: (B, L) masking noise (small = kept).
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
        mean, std = MF.patch_mean_std(target)  # (B, L, 1) each
        pred = pred * std + mean
    baseline = mean_colour_prediction(target, mask, model.config.in_chans)
    return HeldoutScores(float(MF.masked_mse_loss(pred, target, mask)),
                         float(MF.masked_mse_loss(baseline, target, mask)))
