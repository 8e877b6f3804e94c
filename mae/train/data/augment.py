"""The paper's pretraining augmentation on uint8 images, and the normalisation that runs on the training device.

Augmentation (Sec. 4 / A.1): RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3, bicubic) + horizontal flip, no colour
jitter. Every random number of a sample (its crop box, its flip, its masking noise) comes from its own
``torch.Generator`` seeded with ``(seed, epoch, index)``, drawn with the same calls in the same order as torchvision's
``RandomResizedCrop.get_params`` and ``RandomHorizontalFlip``: from the same generator state the boxes and flips are
exactly torchvision's (``tests/test_pipeline.py`` checks this), and the pixels differ only by resampling.

What is faster than torchvision's PIL transforms, and why the output is the same up to resampling:
  1. the crop box is drawn from the image size in the file's header, before any pixel is decoded;
  2. a JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling) when the crop stays at least ``size`` pixels on both
     sides at that scale, i.e. when the resize would shrink it anyway; the box is mapped onto the smaller image;
  3. crop + resize run on uint8 tensors (torch's antialiased bicubic, the same filter as PIL's, vectorised);
  4. the batch stays uint8 (4x fewer bytes to collate, pin and copy) and is normalised on the training device.

Decoding on the device (``mae-pretrain --decode-device cuda``) is a mode of the same pipeline, not a second one: with
``encoded=True`` a worker draws the same box, flip and noise from the same generator, but ships a JPEG's bytes and its
box and flip (``EncodedView``) instead of pixels; ``finish_batch`` then decodes the batch's JPEGs on the device in one
call (nvJPEG on CUDA), crops, resizes with the same ``crop_resize`` and flips. Other files (PNG, CMYK JPEG, ...) are
decoded in the worker as usual. The device decodes the whole file (no DCT scaling), so its pixels differ slightly from
the worker's (``tests/test_decode_device.py`` states and checks the tolerance); the draws are identical.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

from ..._checks import to_pair
from ...config import MAEConfig
from ...functional import block_mask, grid_mask, mask_to_noise
from ...io.images import decode_jpegs, decode_rgb, read_header

__all__ = [
    "CROP_RATIO",
    "CROP_SCALE",
    "CropBox",
    "EncodedBatch",
    "EncodedView",
    "augment_sample",
    "center_view",
    "collate_samples",
    "crop_resize",
    "finish_batch",
    "normalize_on_device",
    "random_resized_crop",
    "sample_crop",
    "sample_flip",
    "sample_generator",
]

CROP_SCALE = (0.2, 1.0)  # Sec. A.1: RandomResizedCrop's area range, as in the authors' recipe
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect-ratio range
# torchvision draws the log aspect ratio between float32 logs of the bounds: the same float32 values give the same draws
_LOG_RATIO = torch.log(torch.tensor(CROP_RATIO)).tolist()

# DCT scaling stops where the crop is still REDUCING_GAP times the output side, so the bicubic filter, not the DCT,
# shapes the result (Pillow's Image.thumbnail uses the same rule with draft(), reducing_gap=2.0)
REDUCING_GAP = 2.0

Source = bytes | np.ndarray  # an encoded image file, or decoded RGB uint8 pixels (H, W, 3)


class CropBox(NamedTuple):
    """A crop in pixels of the full image: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one sample: a pure function of (seed, epoch, index), independent of processes and workers."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def sample_crop(width: int, height: int, generator: torch.Generator) -> CropBox:
    """RandomResizedCrop's box for a (width, height) image: torchvision's algorithm, drawing from ``generator``.

    Up to 10 tries of an area fraction uniform in CROP_SCALE and a log-uniform aspect ratio in CROP_RATIO; a box that
    fits gets a uniform position. If none fits, the centre crop of the image clamped to the ratio range.
    """
    area = width * height
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(*CROP_SCALE, generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(*_LOG_RATIO, generator=generator)).item()  # float32 exp too
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return CropBox(top, left, h, w)
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def sample_flip(generator: torch.Generator) -> bool:
    """RandomHorizontalFlip(p=0.5)'s draw."""
    return bool(torch.rand(1, generator=generator).item() < 0.5)


class EncodedView(NamedTuple):
    """A view left to the device (``encoded=True``): a JPEG's bytes, its crop box on the full image, its flip."""

    data: Tensor  # (N,) uint8: the file as stored
    box: CropBox
    flip: bool
    size: int  # the side of the view to make


def crop_resize(pixels: np.ndarray | Tensor, box: CropBox, size: int | tuple[int, int], flip: bool = False) -> Tensor:
    """Crop ``box`` out of RGB uint8 pixels (H, W, 3), resize it to ``size`` with antialiased bicubic, flip.

    Args:
        pixels: a NumPy array, or a tensor on any device (a (3, H, W) image permuted to (H, W, 3) is fine).
        size: the output side (a square), or ``(height, width)``.

    Returns:
        uint8 tensor (3, height, width) in channels-last memory (its pixels are (R, G, B) triples, like the file's):
        making it contiguous would cost a transposition here, while ``collate_samples`` stacks such tensors as they
        are and ``normalize_on_device`` lays the batch out on the device.
    """
    out_size = to_pair(size, "size")  # (height, width)
    crop = torch.as_tensor(pixels[box.top:box.top + box.height, box.left:box.left + box.width])  # (h, w, 3) view
    # channels-last is the layout of torch's vectorised uint8 resampling kernels
    x = crop.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)  # (1, 3, h, w)
    if x.device.type == "cpu":
        out = F.interpolate(x, size=out_size, mode="bicubic", antialias=True, align_corners=False)[0]  # (3, h, w)
    else:  # CUDA has no uint8 antialiased kernel: the same filter in float32, rounded back as the uint8 kernel rounds
        out = F.interpolate(x.float(), size=out_size, mode="bicubic", antialias=True, align_corners=False)[0]
        out = out.round_().clamp_(0, 255).to(torch.uint8)  # (3, h, w)
    return out.flip(-1) if flip else out


def _decoded(source: Source, name: str, box: CropBox, full: tuple[int, int], size: int) -> tuple[np.ndarray, CropBox]:
    """The pixels to crop ``box`` from, decoded as small as keeps the crop >= size, and the box mapped onto them."""
    if isinstance(source, np.ndarray):
        return source, box
    width, height = full
    target = size * REDUCING_GAP  # the crop's side after DCT scaling must stay >= target
    min_size = (math.ceil(width * target / box.width), math.ceil(height * target / box.height))
    pixels = decode_rgb(source, name, min_size=min_size)
    h, w = pixels.shape[:2]
    if (w, h) == (width, height):
        return pixels, box
    sx, sy = w / width, h / height  # round each edge: the box moves by at most half a pixel of the smaller image
    top, left = round(box.top * sy), round(box.left * sx)
    bottom, right = round((box.top + box.height) * sy), round((box.left + box.width) * sx)
    return pixels, CropBox(top, left, max(bottom - top, 1), max(right - left, 1))


def _size_of(source: Source, name: str) -> tuple[int, int, bool]:
    """(width, height, whether the device can decode it: a YCbCr or grey JPEG)."""
    if isinstance(source, np.ndarray):
        return source.shape[1], source.shape[0], False
    header = read_header(source, name)
    return header.width, header.height, header.fast


def random_resized_crop(source: Source, name: str, size: int, generator: torch.Generator, *,
                        encoded: bool = False) -> Tensor | EncodedView:
    """The training view of one image: a random crop (and flip) resized to (size, size). Returns uint8 (3, size, size).

    Args:
        source: the encoded file (decoded here, at reduced scale when possible) or RGB uint8 pixels (H, W, 3).
        name: how errors name the image.
        size: output side in pixels.
        generator: the sample's generator (see ``sample_generator``); draws the box, then the flip.
        encoded: return a JPEG undecoded, as an ``EncodedView`` for ``finish_batch`` (other sources as pixels).
    """
    width, height, device_decodable = _size_of(source, name)
    box = sample_crop(width, height, generator)
    flip = sample_flip(generator)
    if encoded and device_decodable:
        return EncodedView(torch.frombuffer(bytearray(source), dtype=torch.uint8), box, flip, size)
    pixels, box = _decoded(source, name, box, (width, height), size)
    return crop_resize(pixels, box, size, flip)


def center_view(source: Source, name: str, size: int) -> Tensor:
    """The deterministic view for figures: the centred square of side min(H, W), resized to (size, size). uint8."""
    width, height, _ = _size_of(source, name)
    side = min(width, height)
    box = CropBox((height - side) // 2, (width - side) // 2, side, side)
    pixels, box = _decoded(source, name, box, (width, height), size)
    return crop_resize(pixels, box, size)


class MaskingSpec(NamedTuple):
    """What each sample's masking noise encodes: L patches, and the model's masking strategy on its grid.

    The model ranks patches by this noise (small = kept, ``random_masking``). For "random" it is uniform in [0, 1);
    for "block" and "grid" (Table 1f) it ranks that strategy's kept patches first (``mask_to_noise``), so the one
    argsort masking removes exactly the strategy's patches, and the masks are a pure function of the sample's seed.
    """

    num_patches: int
    masking: str = "random"
    grid_size: tuple[int, int] | None = None  # (gh, gw); needed for "block" and "grid"
    mask_ratio: float = 0.75

    def draw(self, generator: torch.Generator) -> Tensor:
        if self.masking == "random":
            return torch.rand(self.num_patches, generator=generator)  # (L,)
        strategy = block_mask if self.masking == "block" else grid_mask
        removed = strategy(1, self.grid_size, self.mask_ratio, generator=generator)  # (1, L) 1 = removed
        return mask_to_noise(removed, generator=generator)[0]  # (L,) the kept patches rank first

    @classmethod
    def of(cls, model: MAEConfig) -> MaskingSpec:
        """The masking of the model ``model`` describes."""
        return cls(model.num_patches, model.masking, model.grid_size, model.mask_ratio)


def augment_sample(source: Source, name: str, *, size: int, noise: MaskingSpec, seed: int, epoch: int,
                   index: int, encoded: bool = False) -> tuple[Tensor | EncodedView, Tensor]:
    """One training sample: ``(image uint8 (3, size, size), masking noise (L,))``, a pure function of
    ``(source, seed, epoch, index)``: the crop, the flip and the noise come from the sample's own generator.
    With ``encoded=True`` a JPEG's image is an ``EncodedView`` (the same box and flip), made by ``finish_batch``."""
    generator = sample_generator(seed, epoch, index)
    image = random_resized_crop(source, name, size, generator, encoded=encoded)
    return image, noise.draw(generator)  # (3, S, S) or EncodedView, (L,)


def normalize_on_device(batch: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images (B, C, H, W) -> float32 ``(x / 255 - mean) / std``, computed on the batch's device.

    The same operations, in the same order, as torchvision's ``ToTensor`` + ``Normalize``, so the values are
    identical; run after the uint8 batch has been copied to the GPU, where this costs nothing noticeable.
    """
    if batch.dtype != torch.uint8 or batch.ndim != 4:
        raise TypeError(f"batch must be a uint8 tensor (B, C, H, W), got {batch.dtype} of shape {tuple(batch.shape)}")
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), batch.device)
    x = batch.to(torch.float32, memory_format=torch.contiguous_format)  # channels-last uint8 -> contiguous float
    return (x.div(255) - mean_t) / std_t  # (B, C, H, W)


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(1, C, 1, 1) float32 tensors on ``device``, made once: a copy to the GPU at every step would wait for it."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1))


class EncodedBatch(NamedTuple):
    """A batch some of whose views the device still has to make (``finish_batch``)."""

    pixels: Tensor  # (B, 3, S, S) uint8 channels-last: the views made in the worker; zeros in the encoded rows
    data: list[Tensor]  # (E,) the encoded views' JPEG bytes
    rows: Tensor  # (E,) int64: their rows in the batch
    boxes: Tensor  # (E, 4) int64: (top, left, height, width) on the full image
    flips: Tensor  # (E,) bool


def collate_samples(samples: Sequence[tuple[Tensor | EncodedView, Tensor]]) -> tuple[Tensor | EncodedBatch, Tensor]:
    """Batch ``(image uint8 (3, S, S), noise (L,))`` samples: images (B, 3, S, S) stored channels-last, noise (B, L).

    In a data-loader worker the batch is written straight into shared memory (as torch's default collate does), so
    the main process receives it without another copy. When some images are ``EncodedView``s the images become an
    ``EncodedBatch`` (give it to ``finish_batch``).
    """
    images, noise = zip(*samples, strict=True)
    rows = [i for i, im in enumerate(images) if isinstance(im, EncodedView)]
    noise_batch = default_collate(list(noise))  # (B, L)
    if not rows:
        pixels = default_collate([im.permute(1, 2, 0) for im in images])  # (B, S, S, 3): no transposition to copy
        return pixels.permute(0, 3, 1, 2), noise_batch  # (B, 3, S, S) channels-last, (B, L)
    encoded = [images[i] for i in rows]
    blank = torch.zeros(encoded[0].size, encoded[0].size, 3, dtype=torch.uint8)  # (S, S, 3)
    pixels = default_collate([blank if isinstance(im, EncodedView) else im.permute(1, 2, 0) for im in images])
    return EncodedBatch(pixels.permute(0, 3, 1, 2), [v.data for v in encoded], torch.tensor(rows, dtype=torch.int64),
                        torch.tensor([v.box for v in encoded], dtype=torch.int64).view(-1, 4),
                        torch.tensor([v.flip for v in encoded], dtype=torch.bool)), noise_batch


def finish_batch(batch: tuple[Tensor | EncodedBatch, Tensor], device: torch.device | str) -> tuple[Tensor, Tensor]:
    """A collated batch on ``device``: ``(images uint8 (B, 3, S, S), noise (B, L))``, the encoded views made there.

    The batch's JPEGs are decoded in one call on ``device`` (nvJPEG on CUDA, ``mae.io.images.decode_jpegs``), then
    each is cropped to its box, resized by ``crop_resize`` and flipped, exactly as the worker would have done with the
    same draws, but from the full-size image.
    """
    images, noise = batch
    noise = noise.to(device, non_blocking=True)
    if not isinstance(images, EncodedBatch):
        return images.to(device, non_blocking=True), noise
    pixels = images.pixels.to(device, non_blocking=True)  # (B, 3, S, S)
    size = tuple(pixels.shape[-2:])
    decoded = decode_jpegs(images.data, device)  # E x (3, H, W)
    views = [crop_resize(image.permute(1, 2, 0), CropBox(*box), size, flip)  # (3, S, S)
             for image, box, flip in zip(decoded, images.boxes.tolist(), images.flips.tolist(), strict=True)]
    pixels[images.rows.to(device)] = torch.stack(views)  # (E, 3, S, S) into their rows
    return pixels, noise
