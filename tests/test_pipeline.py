"""The fast input pipeline against torchvision's PIL transforms it replaces: the same crop boxes, flips and masking
noise (exactly, from the same generator state; and in distribution), the same pixels up to resampling, and the same
normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from mae.config import IMAGENET_MEAN, IMAGENET_STD
from mae.train.augment import (
    CROP_RATIO,
    CROP_SCALE,
    augment_sample,
    normalize_on_device,
    sample_crop,
    sample_flip,
)

SIZES = [(500, 375), (375, 500), (64, 48), (2000, 300), (300, 2000), (224, 224), (20, 20)]


def torchvision_draws(width: int, height: int, seed: int):
    """What torchvision's RandomResizedCrop + RandomHorizontalFlip draw from the global generator seeded with seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        box = transforms.RandomResizedCrop.get_params(torch.empty(1, height, width), list(CROP_SCALE), list(CROP_RATIO))
        flip = bool(torch.rand(1) < 0.5)
    return box, flip


def test_boxes_and_flips_are_torchvisions_from_the_same_generator_state():
    for width, height in SIZES:  # includes extreme ratios, where the 10 tries fail and the centre crop is taken
        for seed in range(200):
            gen = torch.Generator().manual_seed(seed)
            ours = (tuple(sample_crop(width, height, gen)), sample_flip(gen))
            assert ours == torchvision_draws(width, height, seed), (width, height, seed)


def test_crop_distribution_matches_torchvision():
    """Two-sample Kolmogorov-Smirnov tests on independent draws (different seeds): area fraction, log aspect ratio and
    centre position of the boxes; a binomial test on flips."""
    stats = pytest.importorskip("scipy.stats")
    width, height, n = 500, 375, 3000

    def features(boxes):
        b = np.asarray(boxes, dtype=np.float64)  # (n, 4) top, left, height, width
        return {"area": b[:, 2] * b[:, 3] / (width * height), "log_ratio": np.log(b[:, 3] / b[:, 2]),
                "cx": (b[:, 1] + b[:, 3] / 2) / width, "cy": (b[:, 0] + b[:, 2] / 2) / height}

    ours, flips = [], 0
    for seed in range(n):
        gen = torch.Generator().manual_seed(10_000 + seed)
        ours.append(tuple(sample_crop(width, height, gen)))
        flips += sample_flip(gen)
    theirs = [torchvision_draws(width, height, seed)[0] for seed in range(n)]
    a, b = features(ours), features(theirs)
    for name in a:
        assert stats.ks_2samp(a[name], b[name]).pvalue > 1e-3, name
    assert stats.binomtest(flips, n, 0.5).pvalue > 1e-3
    assert a["area"].min() >= CROP_SCALE[0] - 0.01 and a["area"].max() <= 1.0


def test_normalize_on_device_equals_totensor_normalize():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([reference(Image.fromarray(p)) for p in pixels])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # (B, C, H, W) uint8
    assert torch.equal(normalize_on_device(batch, IMAGENET_MEAN, IMAGENET_STD), expected)
    with pytest.raises(TypeError, match="uint8"):
        normalize_on_device(expected, IMAGENET_MEAN, IMAGENET_STD)


def photo_jpeg(width: int, height: int) -> bytes:
    from skimage import data as skdata

    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).resize((width, height), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("width,height", [(500, 375), (2048, 1536)])
def test_outputs_match_the_pil_pipeline_up_to_resampling(width, height):
    """Old path: PIL decode + torchvision RandomResizedCrop/flip/ToTensor/Normalize with the global generator seeded
    per sample. New path: header-first box, DCT-scaled decode, uint8 crop/resize, normalised afterwards."""
    data = photo_jpeg(width, height)
    old = transforms.Compose([
        transforms.RandomResizedCrop(64, scale=CROP_SCALE, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    errors = []
    for index in range(12):
        img, noise = augment_sample(data, "astronaut.jpg", size=64, num_patches=16, seed=0, epoch=0, index=index)
        seed = int(np.random.SeedSequence([0, 0, index]).generate_state(1, np.uint64)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = old(Image.open(io.BytesIO(data)).convert("RGB"))
            expected_noise = torch.rand(16)
        assert torch.equal(noise, expected_noise)  # the same draws, in the same order, up to the noise
        ours = normalize_on_device(img[None], IMAGENET_MEAN, IMAGENET_STD)[0]
        errors.append(((ours - expected) * std * 255).abs())  # in 8-bit levels
    errors = torch.stack(errors)
    assert errors.mean() < 3.0 and errors.quantile(0.99) < 20, (errors.mean(), errors.quantile(0.99))
