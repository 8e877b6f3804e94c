"""Labelled data for evaluation: a folder with ``train/<class>/`` and ``val/<class>/``, or the built-in digits;
transforms.

Folder images are read by ``mae.io.images``, the reader pretraining uses, with its rules: 16-bit images scaled to 8
bits, float images in [0, 1], integer images of unknown range refused, unreadable files (and FIFOs, devices) skipped
and counted by name, symbolic-link cycles walked once. The label of an image is the class folder directly under its
split; files directly in ``train/`` or ``val/`` have no class and are left out.

Built-in data set (no ``--data``): scikit-learn's handwritten digits, 1,797 grey 8x8 images of 10 classes that ship
inside the package (offline). They are upscaled bilinearly to the model's input size and repeated to three channels;
a fixed stratified split holds out 20% of each class (1,438 train / 359 val).

Transforms (the authors' recipes, docs/evaluation.md): evaluation is Resize(img_size / crop_pct, bicubic) +
CenterCrop(img_size); the linear probe trains on RandomResizedCrop + flip; fine-tuning uses timm's ``create_transform``
with RandAugment 'rand-m9-mstd0.5-inc1' and random erasing 0.25 (pixel mode), exactly the authors' pipeline. All
normalise with the ImageNet mean and std, as the encoder saw in pretraining.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset
from torchvision import transforms

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..io.images import decode_rgb, scan_image_folder

__all__ = [
    "DIGITS_VAL_FRACTION",
    "DigitsDataset",
    "LabelledFolder",
    "LabelledData",
    "digits_split",
    "eval_transform",
    "finetune_train_transform",
    "load_data",
    "probe_train_transform",
]

DIGITS_VAL_FRACTION = 0.2
_INTERPOLATION = transforms.InterpolationMode.BICUBIC


@dataclass
class LabelledData:
    """The two splits of a classification data set and what they are."""

    train: Dataset  # samples (PIL image or tensor after the transform, int label)
    val: Dataset
    classes: list[str]
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def transformed(self, train_transform, val_transform) -> LabelledData:
        """Set the transforms of the two splits (chosen once the run's recipe, which depends on the data, is known)."""
        self.train.transform, self.val.transform = train_transform, val_transform
        return self


def digits_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) uint8 in [0, 255] and labels (N,) of one split of scikit-learn's digits.

    The split is fixed (``seed`` 0) and stratified: ``DIGITS_VAL_FRACTION`` of each class goes to ``val``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "the built-in digits need scikit-learn: pip install 'mae-pytorch[eval]' (or pass --data DIR)"
        ) from err
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val[members[: round(DIGITS_VAL_FRACTION * len(members))]] = True
    keep = val if split == "val" else ~val
    return images[keep], labels[keep]


class DigitsDataset(Dataset):
    """One split of the built-in digits as RGB PIL images of ``size`` x ``size`` (bilinear upscaling)."""

    def __init__(self, split: str, size: int, transform=None) -> None:
        self.images, self.labels = digits_split(split)
        self.size, self.transform = size, transform
        self.classes = [str(c) for c in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L").resize((self.size, self.size), Image.BILINEAR)
        img = img.convert("RGB")
        return (self.transform(img) if self.transform else img), int(self.labels[index])


class LabelledFolder(Dataset):
    """One split of a labelled folder (``split/<class>/.../<image>``) as ``(RGB PIL image after the transform,
    label)``, the classes in sorted order."""

    def __init__(self, split_dir: Path, classes: list[str], transform=None, name: str = "--data") -> None:
        paths, self.skipped = scan_image_folder(split_dir, name=name)
        index = {c: i for i, c in enumerate(classes)}
        self.samples = []  # (path, label): images inside a class folder (files directly in the split have no class)
        for path in paths:
            parts = path.relative_to(split_dir).parts
            if len(parts) > 1 and parts[0] in index:
                self.samples.append((path, index[parts[0]]))
        self.classes, self.transform = classes, transform

    @property
    def labels(self) -> list[int]:
        """The label of every image, in order, without decoding any (as ``DigitsDataset.labels``)."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        img = Image.fromarray(decode_rgb(path.read_bytes(), repr(str(path))))
        return (self.transform(img) if self.transform else img), label


def _check_folder(root: Path, name: str) -> tuple[Path, Path]:
    if not root.exists():
        raise FileNotFoundError(f"{name} {str(root)!r} does not exist; expected a folder with train/ and val/")
    if not root.is_dir():
        raise ValueError(f"{name} {str(root)!r} is a file; expected a folder with train/ and val/ subfolders")
    splits = root / "train", root / "val"
    missing = [p.name + "/" for p in splits if not p.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{name} {str(root)!r} has no {' and no '.join(missing)} subfolder; expected ImageFolder layout "
            f"{root}/train/<class>/<image> and {root}/val/<class>/<image>"
        )
    found = [sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")) for p in splits]
    for p, names in zip(splits, found, strict=True):
        if not names:
            raise ValueError(f"{str(p)!r} has no class subfolders; expected {p}/<class>/<image>")
    if found[0] != found[1]:
        only_train = sorted(set(found[0]) - set(found[1]))
        only_val = sorted(set(found[1]) - set(found[0]))
        raise ValueError(
            f"{name} {str(root)!r}: the class folders of train/ and val/ differ (only in train/: {only_train}; "
            f"only in val/: {only_val}); both must hold the same classes so labels mean the same thing"
        )
    return splits


def load_data(data: str | os.PathLike | None, img_size: int, train_transform=None, val_transform=None, *,
              name: str = "--data") -> LabelledData:
    """``data/train`` and ``data/val`` as labelled folders (``LabelledFolder``), or the built-in digits when ``data`` is
    None.

    Args:
        data: folder with ``train/<class>/...`` and ``val/<class>/...``; None for the built-in digits.
        img_size: the model's input size (the digits are upscaled to it).
        train_transform, val_transform: applied to each PIL image.
        name: how errors name ``data`` (the flag it came from).

    Raises:
        FileNotFoundError: ``data`` or one of its ``train/``, ``val/`` folders is missing.
        ValueError: no class folders, or the class folders of the two splits differ.
    """
    if data is None:
        train = DigitsDataset("train", img_size, train_transform)
        val = DigitsDataset("val", img_size, val_transform)
        desc = f"scikit-learn digits (8x8 grey, upscaled to {img_size} px): {len(train)} train / {len(val)} val"
        return LabelledData(train, val, train.classes, desc)
    train_dir, val_dir = _check_folder(Path(data).expanduser(), name)
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    train = LabelledFolder(train_dir, classes, train_transform, name)
    val = LabelledFolder(val_dir, classes, val_transform, name)
    for ds, d in ((train, train_dir), (val, val_dir)):
        if len(ds) == 0:
            raise ValueError(f"{str(d)!r} holds no image files in its class folders")
    skipped = len(train.skipped) + len(val.skipped)
    desc = (f"image folder {data}: {len(train)} train / {len(val)} val images, {len(classes)} classes"
            + (f", {skipped} unreadable file(s) skipped (e.g. {(train.skipped + val.skipped)[0]})" if skipped else ""))
    return LabelledData(train, val, classes, desc)


def _normalise() -> list:
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def eval_transform(img_size: int, crop_pct: float = 0.875) -> transforms.Compose:
    """Resize the short side to ``img_size / crop_pct`` (bicubic), centre-crop ``img_size`` (paper: 256 -> 224)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    resize = int(img_size / crop_pct)
    return transforms.Compose(
        [transforms.Resize(resize, interpolation=_INTERPOLATION), transforms.CenterCrop(img_size), *_normalise()]
    )


def probe_train_transform(img_size: int) -> transforms.Compose:
    """Linear-probe training augmentation: RandomResizedCrop (bicubic) + horizontal flip, nothing else."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, interpolation=_INTERPOLATION),
        transforms.RandomHorizontalFlip(),
        *_normalise(),
    ])


def finetune_train_transform(img_size: int, auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                             reprob: float = 0.25):
    """Fine-tuning augmentation, timm's ``create_transform`` with the authors' arguments (no colour jitter)."""
    transform = create_transform(
        input_size=img_size, is_training=True, color_jitter=None, auto_augment=auto_augment,
        interpolation="bicubic", re_prob=reprob, re_mode="pixel", re_count=1,
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
    )
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    return transform


def _posterize(img: Image.Image, bits: int, **_) -> Image.Image:
    """Keep the ``bits`` most significant bits of each channel value, for 0 to 8 bits.

    RandAugment's 'PosterizeIncreasing' asks for 0 bits at the top magnitude (m9 with mstd 0.5 reaches it); Pillow
    up to 12 returned a black image for that, Pillow 13 raises. This keeps the old, intended result.
    """
    if bits >= 8:
        return img
    mask = (0xFF << (8 - max(bits, 0))) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))
