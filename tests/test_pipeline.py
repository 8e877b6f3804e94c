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
from mae.io import images as decode
from mae.train.data.augment import (
    CROP_RATIO,
    CROP_SCALE,
    MaskingSpec,
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
        for seed in range(40):
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

    gen, ours, flips = torch.Generator().manual_seed(1), [], 0
    for _ in range(n):
        ours.append(tuple(sample_crop(width, height, gen)))
        flips += sample_flip(gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)  # independent of ours
        image = torch.empty(1, height, width)
        theirs = [transforms.RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO)) for _ in range(n)]
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


# (width, height, crop side, bound on the mean |difference| in grey levels of 255). 500x375 -> 224: no crop is twice
# 224 px, so no DCT scaling: the same pixels up to rounding. The others decode at 1/2 or 1/4 first; what remains is the
# DCT's own low-pass and crop edges snapped to the reduced image's pixel grid (at most 1/4 output pixel).
CASES = [(500, 375, 224, 0.1), (2048, 1536, 224, 1.5), (500, 375, 64, 3.5)]


@pytest.mark.parametrize("width,height,size,bound", CASES)
def test_outputs_match_the_pil_pipeline_up_to_resampling(width, height, size, bound):
    """Old path: PIL decode + torchvision RandomResizedCrop/flip/ToTensor/Normalize with the global generator seeded
    per sample. New path: header-first box, DCT-scaled decode, uint8 crop/resize, normalised afterwards."""
    data = photo_jpeg(width, height)
    old = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=CROP_SCALE, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    errors = []
    for index in range(12):
        img, noise = augment_sample(data, "astronaut.jpg", size=size, noise=MaskingSpec(16),
                                    seed=0, epoch=0, index=index)
        seed = int(np.random.SeedSequence([0, 0, index]).generate_state(1, np.uint64)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = old(Image.open(io.BytesIO(data)).convert("RGB"))
            expected_noise = torch.rand(16)
        assert torch.equal(noise, expected_noise)  # the same draws, in the same order, up to the noise
        ours = normalize_on_device(img[None], IMAGENET_MEAN, IMAGENET_STD)[0]
        errors.append(((ours - expected) * std * 255).abs())  # in 8-bit levels
    errors = torch.stack(errors)
    print(f"mean |difference| {errors.mean():.3f} grey levels, 99th percentile {errors.quantile(0.99):.1f}")
    assert errors.mean() < bound


def test_pillow_fallback_decodes_jpeg_like_libjpeg_turbo(monkeypatch):
    """Without simplejpeg, Pillow decodes the JPEG (its draft mode: the same DCT scaling) and the samples agree."""
    data = photo_jpeg(2048, 1536)
    fast = [augment_sample(data, "a.jpg", size=224, noise=MaskingSpec(4), seed=1, epoch=0, index=i)[0]
            for i in range(4)]
    monkeypatch.setattr(decode, "simplejpeg", None)
    plain = [augment_sample(data, "a.jpg", size=224, noise=MaskingSpec(4), seed=1, epoch=0, index=i)[0]
             for i in range(4)]
    for a, b in zip(fast, plain, strict=True):
        assert (a.float() - b.float()).abs().mean() < 1.0


def test_batches_measure_the_wait_for_data():
    """``Batches.wait_seconds`` counts the time spent getting batches, not the time the loop spends on them."""
    import time

    from mae.train.data import build_loader

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            time.sleep(0.05)
            return torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(1)

        def set_epoch(self, epoch):
            self.epoch = epoch

    batches = build_loader(Slow(), batch_size=2, num_workers=0, rank=0, world_size=1, seed=0, pin_memory=False)
    batches.set_epoch(0)
    for _ in batches:
        time.sleep(0.3)  # the "training step"
    assert len(batches) == 2 and 0.18 <= batches.wait_seconds < 0.5  # 4 samples x 50 ms, not the 2 x 300 ms steps
    batches.set_epoch(1)
    assert batches.wait_seconds == 0.0
