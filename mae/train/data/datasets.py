"""Pretraining images: scikit-image's bundled photographs or a folder of image files, as augmented samples.

Every sample's randomness (its crop, its flip and its masking noise) is drawn from a generator seeded by
``(seed, epoch, index)``. A sample therefore looks the same whatever the number of processes, data-loader workers or
restarts, which is what makes ``--resume`` exact and lets one process reproduce a multi-process run.

Folders are scanned by ``mae.io.images.scan_image_folder``, the one image reader pretraining and evaluation share
(unreadable files skipped, counted and named). A file that opened at start-up but fails to decode later (e.g.
truncated data) stops the run with an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from ...io.images import UnreadableImageError
from .augment import MaskingSpec, Source, augment_sample

__all__ = [
    "SKIMAGE_HELD_OUT",
    "SKIMAGE_TRAIN",
    "ImageFiles",
    "PretrainSamples",
    "skimage_photos",
]

# Natural photographs bundled with scikit-image (no download). Grey ones are repeated to three channels.
SKIMAGE_TRAIN = (
    "astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry", "retina",
    "camera", "coins", "moon", "brick", "grass", "gravel",
)
SKIMAGE_HELD_OUT = ("chelsea", "coffee")  # never trained on; used for the reconstruction figure


def skimage_photos(names: Sequence[str]) -> list[tuple[np.ndarray, str]]:
    """scikit-image's photographs as ``(RGB uint8 pixels (H, W, 3), name)`` (``stereo_motorcycle``: its left view)."""
    from skimage import data as skdata

    photos = []
    for name in names:
        array = getattr(skdata, name)()
        if isinstance(array, tuple):  # stereo_motorcycle returns (left, right, disparity)
            array = array[0]
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)  # grey -> RGB
        photos.append((np.ascontiguousarray(array[:, :, :3], dtype=np.uint8), f"scikit-image {name}"))
    return photos


class ImageFiles(Dataset):
    """Image files on disk: item ``i`` is ``(the file's bytes, its path)``; decoding happens in the augmentation."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[bytes, str]:
        path = self.paths[index]
        return path.read_bytes(), repr(str(path))


class PretrainSamples(Dataset):
    """``(image uint8 (3, S, S), masking noise (L,))`` pairs, each a pure function of ``(seed, epoch, index)``.

    Args:
        images: indexable, item ``i`` = ``(source, name)``: encoded bytes or RGB uint8 pixels, and a name for errors
            (a list, or ``ImageFiles``).
        img_size: S, the side of the square crops.
        noise: the masking noise each sample carries (``MaskingSpec``: L patches and the masking strategy).
        seed: run seed.
        repeat: each image appears ``repeat`` times per epoch (with different crops), for tiny datasets.
        encoded: leave JPEGs undecoded for the training device (``augment_sample``'s ``encoded``).
    """

    def __init__(self, images, *, img_size: int, noise: MaskingSpec, seed: int, repeat: int = 1,
                 encoded: bool = False) -> None:
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat!r}")
        self.images, self.img_size = images, img_size
        self.noise, self.seed, self.repeat = noise, seed, repeat
        self.epoch, self.encoded = 0, encoded

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's iterator is created (workers copy the dataset then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        source, name = self.images[index % len(self.images)]
        return sample_or_explain(source, name, self, index)


def sample_or_explain(source: Source, name: str, samples, index: int) -> tuple[Tensor, Tensor]:
    """``augment_sample`` for a dataset with ``img_size, noise, seed, epoch, encoded``; errors say what to do."""
    try:
        return augment_sample(source, name, size=samples.img_size, noise=samples.noise,
                              seed=samples.seed, epoch=samples.epoch, index=index,
                              encoded=samples.encoded)
    except UnreadableImageError as err:
        raise UnreadableImageError(
            f"{err}; it passed the start-up check but cannot be used: remove or replace it and resume from the "
            "last checkpoint"
        ) from err
