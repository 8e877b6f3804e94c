"""Pretraining data: the built-in scikit-image photographs or a folder of images, with the paper's augmentation.

Every sample's randomness (its crop, its flip and its masking noise) is drawn from a generator seeded by
``(seed, epoch, index)``. A sample therefore looks the same whatever the number of processes, data-loader workers or
restarts, which is what makes ``--resume`` exact and lets one process reproduce a multi-process run.

Unreadable files: when ``--data`` is scanned every image file is opened once; files that cannot be opened are
SKIPPED, counted, and reported in a warning (and in the run's config). A file that opened at start-up but fails to
decode later (e.g. truncated data) stops the run with an error naming it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .. import functional as MF
from ..config import IMAGENET_MEAN, IMAGENET_STD, check_masking

if TYPE_CHECKING:  # pillow and torchvision belong to the train extra: imported where used (mae.train.extra)
    from PIL import Image
    from torchvision import transforms

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "SKIMAGE_TRAIN",
    "SKIMAGE_HELD_OUT",
    "ImageFiles",
    "UnreadableImageError",
    "PretrainSamples",
    "scan_image_folder",
    "skimage_photos",
    "train_transform",
    "eval_transform",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Natural photographs bundled with scikit-image (no download). Grey ones are repeated to three channels.
SKIMAGE_TRAIN = (
    "astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry", "retina",
    "camera", "coins", "moon", "brick", "grass", "gravel",
)
SKIMAGE_HELD_OUT = ("chelsea", "coffee")  # never trained on; used for the reconstruction figure


def skimage_photos(names: Sequence[str]) -> list[Image.Image]:
    """Load scikit-image's bundled photographs as RGB PIL images (``stereo_motorcycle``: its left view)."""
    from PIL import Image
    from skimage import data as skdata

    photos = []
    for name in names:
        array = getattr(skdata, name)()
        if isinstance(array, tuple):  # stereo_motorcycle returns (left, right, disparity)
            array = array[0]
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)  # grey -> RGB
        photos.append(Image.fromarray(np.ascontiguousarray(array[:, :, :3])).convert("RGB"))
    return photos


def _is_readable_image(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()  # parses the header (and, for PNG, the chunk checksums) without decoding the pixels
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for broken files
        return False


def scan_image_folder(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Every image file under ``root``: an ImageFolder tree (``root/class/x.jpg``) or a flat folder.

    Class folders are irrelevant for pretraining, so the tree is walked recursively (hidden entries skipped) and the
    files are sorted, giving the same order on every machine.

    Returns:
        ``(readable, skipped)``: the files that open, and those that do not (corrupt, empty, not an image).

    Raises:
        ValueError: ``root`` is missing, not a directory, or holds no image file at all.
    """
    root_path = Path(root)
    if not root_path.exists():
        raise ValueError(f"--data {str(root)!r} does not exist; expected a folder of images (flat or class subfolders)")
    if not root_path.is_dir():
        raise ValueError(f"--data {str(root)!r} is not a directory; expected a folder of images")
    candidates = []
    for dirpath, dirnames, filenames in os.walk(root_path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        candidates += [
            Path(dirpath, f) for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    candidates.sort()
    if not candidates:
        raise ValueError(
            f"--data {str(root)!r} holds no image file (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    with ThreadPoolExecutor(max_workers=8) as pool:  # opening files is I/O bound: threads help on network storage
        ok = list(pool.map(_is_readable_image, candidates))
    readable = [p for p, good in zip(candidates, ok, strict=True) if good]
    skipped = [p for p, good in zip(candidates, ok, strict=True) if not good]
    if skipped:
        examples = ", ".join(str(p) for p in skipped[:3])
        warnings.warn(
            f"--data {str(root)!r}: skipped {len(skipped)} unreadable image file(s) out of {len(candidates)} "
            f"(e.g. {examples})",
            stacklevel=2,
        )
    if not readable:
        raise ValueError(f"--data {str(root)!r}: none of its {len(candidates)} image files could be read")
    return readable, skipped


class UnreadableImageError(ValueError):
    """An image file passed the start-up scan but cannot be decoded (the run stops; see the module docstring)."""


class ImageFiles(Dataset):
    """Images on disk, decoded to RGB PIL images on access."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as err:
            raise UnreadableImageError(
                f"image file {str(path)!r} opened when --data was scanned but cannot be decoded ({err}); "
                "remove or replace it and resume from the last checkpoint"
            ) from err


def train_transform(img_size: int) -> transforms.Compose:
    """The paper's pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + flip + ImageNet normalisation."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(img_size: int) -> transforms.Compose:
    """Deterministic view for figures: resize the short side, centre crop, normalise."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class PretrainSamples(Dataset):
    """``(image (C, H, W), masking noise (L,))`` pairs, each a pure function of ``(seed, epoch, index)``.

    Args:
        images: anything indexable returning PIL images (a list, or ``ImageFiles``).
        transform: the augmentation; it draws from torch's global generator, which is seeded per sample here.
        num_patches: L, the length of the masking noise.
        seed: run seed.
        repeat: each image appears ``repeat`` times per epoch (with different crops), for tiny datasets.
        masking: "random" (the paper's), "block" or "grid" (Table 1f): the noise then ranks that strategy's kept
            patches first, so the model's argsort masking removes exactly the patches the strategy chose.
        grid_size: the (gh, gw) patch grid (gh * gw = num_patches); needed for "block" and "grid".
        mask_ratio: the model's mask ratio; needed for "block" and "grid".
    """

    def __init__(self, images, transform, *, num_patches: int, seed: int, repeat: int = 1, masking: str = "random",
                 grid_size: tuple[int, int] | None = None, mask_ratio: float = 0.75) -> None:
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat!r}")
        if masking != "random" and (grid_size is None or grid_size[0] * grid_size[1] != num_patches):
            raise ValueError(f"masking {masking!r} needs grid_size (gh, gw) with gh * gw = num_patches "
                             f"({num_patches}), got {grid_size!r}")
        self.masking = check_masking(masking, mask_ratio, grid_size or (1, num_patches))
        self.images, self.transform = images, transform
        self.num_patches, self.seed, self.repeat = num_patches, seed, repeat
        self.grid_size, self.mask_ratio = grid_size, mask_ratio
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's iterator is created (workers copy the dataset then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index % len(self.images)]
        sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0])
        # torchvision's transforms use the global generator: seed it for this sample only, leaving it as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            img = self.transform(image)  # (C, H, W)
            noise = self._masking_noise()  # (L,) small = kept, as in random_masking
        return img, noise

    def _masking_noise(self) -> Tensor:
        if self.masking == "random":
            return torch.rand(self.num_patches)  # (L,)
        draw = MF.block_mask if self.masking == "block" else MF.grid_mask
        removed = draw(1, self.grid_size, self.mask_ratio)  # (1, L) 1 = removed, from the generator seeded above
        return MF.mask_to_noise(removed)[0]  # (L,) the kept patches rank first


class RunData(NamedTuple):
    dataset: PretrainSamples
    figure_images: Tensor  # (B, C, H, W) normalised, for the reconstruction figure
    figure_caption: str
    description: dict  # what the run trained on, saved in train_config.json


def build_data(config, num_patches: int) -> RunData:
    """The training samples and the figure batch of a ``TrainConfig``."""
    show = eval_transform(config.img_size)
    if config.data is None:
        images = skimage_photos(SKIMAGE_TRAIN)
        held_out = skimage_photos(SKIMAGE_HELD_OUT)
        # Each held-out photo whole and as its centre half, so the figure shows both coarse and fine structure.
        views = []
        for photo in held_out:
            w, h = photo.size
            views += [photo, photo.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2))]
        figure = torch.stack([show(v) for v in views])  # (2 * held-out, C, H, W)
        caption = f"held-out photos ({', '.join(SKIMAGE_HELD_OUT)}), never trained on"
        description = {"source": "scikit-image", "images": list(SKIMAGE_TRAIN), "held_out": list(SKIMAGE_HELD_OUT)}
    else:
        paths, skipped = scan_image_folder(config.data)
        images = ImageFiles(paths)
        figure = torch.stack([show(images[i]) for i in range(min(8, len(images)))])  # (B, C, H, W)
        caption = f"training images from {config.data}"
        description = {"source": str(config.data), "num_files": len(paths), "num_skipped": len(skipped),
                       "skipped_examples": [str(p) for p in skipped[:10]]}
    model = config.model_config
    dataset = PretrainSamples(images, train_transform(config.img_size), num_patches=num_patches, seed=config.seed,
                              repeat=config.repeat, masking=model.masking, grid_size=model.grid_size,
                              mask_ratio=model.mask_ratio)
    description.update(num_images=len(images), repeat=config.repeat, samples_per_epoch=len(dataset))
    return RunData(dataset, figure, caption, description)
