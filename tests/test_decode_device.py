"""Decoding on the device (``--decode-device cuda``) is a mode of the one pipeline: the same draws, the same pixels.

Run on the CPU through the same functions (``finish_batch(batch, "cpu")`` decodes with the CPU build of the same
decoder library):
  - the boxes, flips and masking noise are exactly the worker path's (same seed, epoch, index);
  - against the worker decoding the whole file, the pixels are identical: the one difference between the two paths
    is the worker's DCT-scaled decoding (a 1/2, 1/4 or 1/8 scale IDCT when the crop allows it);
  - against the default worker path (DCT scaling on), 224-px views are within TOLERANCE (measured on the 12 views
    below: mean |diff| 0.31 grey levels, worst view 1.50, 99th percentile 7 levels; on 48 views of 500x375 to
    2048x1536 JPEGs: 0.30, 1.65 and 5).
On CUDA (``cuda`` mark), nvJPEG's pixels are checked against the CPU decoder's with the same tolerance.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from mae.io.images import read_header
from mae.train.cli import main
from mae.train.data import augment
from mae.train.data.augment import (
    EncodedBatch,
    EncodedView,
    MaskingSpec,
    augment_sample,
    collate_samples,
    finish_batch,
    sample_crop,
    sample_flip,
    sample_generator,
)
from mae.train.data.loader import decode_device_of

# What "the same pixels up to the decoder" means for 224-px views (grey levels of 0..255):
TOLERANCE = {"mean": 0.6, "worst_view_mean": 2.5, "p99": 10}


def jpeg(pixels: np.ndarray, size: tuple[int, int], quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sources() -> list[bytes]:
    """Landscape, portrait and grey JPEGs, large enough for DCT scaling, and one PNG (decoded in the worker)."""
    png = io.BytesIO()
    Image.fromarray(skdata.coffee()).resize((320, 240)).save(png, "PNG")
    return [jpeg(skdata.astronaut(), (2048, 1536)), jpeg(skdata.chelsea(), (600, 800)),
            jpeg(skdata.camera(), (640, 480)), png.getvalue()]


def both_paths(sources: list[bytes], n: int, size: int = 224, epoch: int = 1):
    """The same samples made in the worker, and left for the device; each collated."""
    kw = dict(size=size, noise=MaskingSpec(49), seed=3, epoch=epoch)
    worker = [augment_sample(sources[i % len(sources)], f"img{i}", index=i, **kw) for i in range(n)]
    device = [augment_sample(sources[i % len(sources)], f"img{i}", index=i, encoded=True, **kw) for i in range(n)]
    return worker, device


def test_encoded_samples_carry_the_worker_paths_draws(sources):
    worker, device = both_paths(sources, 8)
    for i, ((_, noise_w), (view, noise_d)) in enumerate(zip(worker, device, strict=True)):
        assert torch.equal(noise_w, noise_d)
        source = sources[i % len(sources)]
        if i % len(sources) == 3:  # the PNG: decoded in the worker, the same pixels
            assert torch.equal(view, worker[i][0])
            continue
        assert isinstance(view, EncodedView)
        header = read_header(source, "x")
        gen = sample_generator(3, 1, i)
        assert view.box == sample_crop(header.width, header.height, gen)
        assert view.flip == sample_flip(gen)
        assert bytes(view.data.numpy()) == source and view.size == 224


def test_device_path_equals_a_full_size_decode_in_the_worker(sources, monkeypatch):
    monkeypatch.setattr(augment, "REDUCING_GAP", 1e9)  # the worker decodes whole files, as the device does
    worker, device = both_paths(sources, 8)
    images_w, noise_w = finish_batch(collate_samples(worker), "cpu")
    batch = collate_samples(device)
    assert isinstance(batch[0], EncodedBatch) and batch[0].rows.tolist() == [0, 1, 2, 4, 5, 6]
    images_d, noise_d = finish_batch(batch, "cpu")
    assert images_d.shape == images_w.shape == (8, 3, 224, 224) and images_d.dtype == torch.uint8
    assert torch.equal(images_d, images_w)
    assert torch.equal(noise_d, noise_w)


def pixel_gap(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    diff = (a.int() - b.int()).abs().float()  # (B, 3, S, S)
    return {"mean": diff.mean().item(), "worst_view_mean": diff.mean(dim=(1, 2, 3)).max().item(),
            "p99": diff.flatten().kthvalue(int(0.99 * diff.numel())).values.item()}


def test_device_path_is_within_tolerance_of_the_default_worker_path(sources):
    worker, device = both_paths(sources, 12)
    images_w, _ = finish_batch(collate_samples(worker), "cpu")
    images_d, _ = finish_batch(collate_samples(device), "cpu")
    gap = pixel_gap(images_d, images_w)
    assert all(gap[k] <= TOLERANCE[k] for k in TOLERANCE), gap
    assert gap["mean"] > 0  # DCT scaling did happen in the worker: this test compares two decodes


def test_all_encoded_batch_and_plain_batch():
    """A batch of JPEGs only still gets its view size from the views; a batch without any passes through."""
    data = jpeg(skdata.astronaut(), (320, 240))
    samples = [augment_sample(data, "a", size=32, noise=MaskingSpec(4), seed=0, epoch=0, index=i, encoded=True)
               for i in range(3)]
    images, noise = finish_batch(collate_samples(samples), torch.device("cpu"))
    assert images.shape == (3, 3, 32, 32) and noise.shape == (3, 4)
    plain = collate_samples([augment_sample(data, "a", size=32, noise=MaskingSpec(4), seed=0, epoch=0, index=0)])
    assert torch.equal(finish_batch(plain, "cpu")[0], plain[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_decode_device_cuda_without_cuda_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="--decode-device cuda needs a CUDA GPU"):
        decode_device_of("cuda", torch.device("cpu"))
    code = main(["--decode-device", "cuda", "--epochs", "1", "--no-progress", "--no-figures",
                 "--output-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--decode-device cuda needs a CUDA GPU" in err
    assert not (tmp_path / "runs").exists()


def test_decode_device_names_are_checked():
    assert decode_device_of("cpu", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="decode_device must be one of"):
        decode_device_of("gpu", torch.device("cpu"))


@pytest.mark.cuda
def test_nvjpeg_pixels_within_tolerance_of_the_cpu_decoder(sources):
    _, device = both_paths(sources, 12)
    batch = collate_samples(device)
    on_gpu, noise = finish_batch(batch, "cuda")
    on_cpu, _ = finish_batch(batch, "cpu")
    assert on_gpu.device.type == "cuda" and noise.device.type == "cuda"
    gap = pixel_gap(on_gpu.cpu(), on_cpu)
    assert all(gap[k] <= TOLERANCE[k] for k in TOLERANCE), gap
