"""Pretraining images: scikit-image's bundled photographs or a folder of image files, as augmented samples.

Every sample's randomness (its crop, its flip and its masking noise) is drawn from a generator seeded by
``(seed, epoch, index)``. A sample therefore looks the same whatever the number of processes, data-loader workers or
restarts, which is what makes ``--resume`` exact and lets one process reproduce a multi-process run.

Unreadable files: when ``--data`` is scanned every image file is opened once; files that cannot be opened are
SKIPPED, counted, and reported in a warning (and in the run's config). A file that opened at start-up but fails to
decode later (e.g. truncated data) stops the run with an error naming it. FIFOs, devices and sockets with an image
name are skipped the same way, by their type, without being opened (a FIFO would wait for a writer). Symbolic links
are followed, but every real folder is walked once: a link cycle neither repeats images nor runs forever.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from ..._checks import special_file_kind
from .augment import MaskingSpec, Source, augment_sample
from .decode import UnreadableImageError, to_rgb_array

__all__ = [
    "IMAGE_EXTENSIONS",
    "SKIMAGE_HELD_OUT",
    "SKIMAGE_TRAIN",
    "ImageFiles",
    "PretrainSamples",
    "scan_image_folder",
    "skimage_photos",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Pixel modes whose values may have no 8-bit meaning (see decode.to_rgb_array): checked when the folder is scanned
_CHECKED_MODES = ("F", "I", "I;32", "I;32B", "I;32L")

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


def _is_readable_image(path: Path) -> bool:
    from PIL import Image  # the train extra's packages are imported where used (mae.train.extra)

    if special_file_kind(path) is not None:
        return False
    try:
        with Image.open(path) as im:
            im.verify()  # parses the header (and, for PNG, the chunk checksums) without decoding the pixels
        with Image.open(path) as im:
            if im.mode in _CHECKED_MODES:  # rare: decode now, so a float image outside [0, 1] is skipped here
                to_rgb_array(im, repr(str(path)))
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for broken files
        return False


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root``, following symbolic links but walking every real folder once, sorted."""
    walked: set[tuple[int, int]] = set()  # (device, inode) of each folder already walked
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in walked:  # reached again through a link (a cycle, or a second way in)
            dirnames[:] = []
            continue
        walked.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def scan_image_folder(root: str | os.PathLike, name: str = "--data") -> tuple[list[Path], list[Path]]:
    """Every image file under ``root``: an ImageFolder tree (``root/class/x.jpg``) or a flat folder.

    Class folders are irrelevant for pretraining, so the tree is walked recursively (hidden entries skipped) and the
    files are sorted, giving the same order on every machine.

    Returns:
        ``(readable, skipped)``: the files that open, and those that do not (corrupt, empty, not an image, a FIFO,
        device or socket).

    Raises:
        ValueError: ``root`` is missing, not a directory, or holds no image file at all.
    """
    root_path = Path(root)
    if not root_path.exists():
        raise ValueError(f"{name} {str(root)!r} does not exist; expected a folder of images (flat or class subfolders)")
    if not root_path.is_dir():
        kind = special_file_kind(root_path) or "a file"
        raise ValueError(f"{name} {str(root)!r} is {kind}, not a directory; expected a folder of images")
    candidates = _image_files(root_path)
    if not candidates:
        raise ValueError(
            f"{name} {str(root)!r} holds no image file (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    with ThreadPoolExecutor(max_workers=8) as pool:  # opening files is I/O bound: threads help on network storage
        ok = list(pool.map(_is_readable_image, candidates))
    readable = [p for p, good in zip(candidates, ok, strict=True) if good]
    skipped = [p for p, good in zip(candidates, ok, strict=True) if not good]
    if skipped:
        examples = ", ".join(str(p) for p in skipped[:3])
        warnings.warn(
            f"{name} {str(root)!r}: skipped {len(skipped)} unreadable image file(s) out of {len(candidates)} "
            f"(e.g. {examples})",
            stacklevel=2,
        )
    if not readable:
        raise ValueError(f"{name} {str(root)!r}: none of its {len(candidates)} image files could be read")
    return readable, skipped


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
