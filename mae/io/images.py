"""The one image reader: folders of image files scanned, and files decoded into RGB uint8 arrays (H, W, 3), fast for
JPEG and correct for everything else. Pretraining and evaluation both read images through it.

JPEG (greyscale or YCbCr, the common case) is decoded by libjpeg-turbo through ``simplejpeg``, optionally at a reduced
size: libjpeg-turbo can run its inverse DCT at 1/2, 1/4 or 1/8 scale, skipping most of the decoding work when the
crop will be shrunk anyway (``min_size``). Everything else (PNG, CMYK JPEG, TIFF, 16-bit, float, palette, ...) goes
through Pillow, the plain fallback; without ``simplejpeg`` installed, JPEG does too (with Pillow's ``draft``, the same
DCT scaling). ``benchmarks/pipeline.py`` measured the candidates; see its README for the numbers behind this choice.

``decode_jpegs`` decodes a batch of JPEGs on a device in one call (``mae-pretrain --decode-device cuda``; nvJPEG on
CUDA): through TorchCodec when it is installed (``pip install 'mae-pytorch[gpu]'``), else through torchvision's
``decode_jpeg``, which torchvision 0.29 deprecated in TorchCodec's favour (same call, same decoders).

Scanning (``scan_image_folder``): every image file is opened once; files that cannot be opened are SKIPPED, counted
and named in a warning (and in the run's config). FIFOs, devices and sockets with an image name are skipped the same
way, by their type, without being opened (a FIFO would wait for a writer). Symbolic links are followed, but every real
folder is walked once: a link cycle neither repeats images nor runs forever.

Pixels are never clipped silently: 16-bit images are scaled to 8 bits (65535 -> 255), float images must hold values
in [0, 1] (scaled by 255), and images whose range is unknown (32-bit integers) are refused with the file's name.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from .._checks import special_file_kind

if TYPE_CHECKING:  # Pillow belongs to the train and eval extras: imported where used
    from PIL import Image

try:  # optional: the train extra installs it; without it JPEG is decoded by Pillow
    import simplejpeg
except ImportError:  # pragma: no cover - exercised only in environments without the package
    simplejpeg = None

__all__ = ["IMAGE_EXTENSIONS", "ImageHeader", "UnreadableImageError", "decode_jpegs", "decode_rgb", "jpeg_decoder",
           "read_header", "scan_image_folder", "to_rgb_array"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Pixel modes whose values may have no 8-bit meaning (see to_rgb_array): checked when a folder is scanned
_CHECKED_MODES = ("F", "I", "I;32", "I;32B", "I;32L")

_JPEG_MAGIC = b"\xff\xd8\xff"
_FAST_JPEG_COLORSPACES = ("YCbCr", "Gray")  # what libjpeg-turbo converts to RGB itself; CMYK and YCCK are not


class UnreadableImageError(ValueError):
    """An image cannot be decoded, or its pixels have no defined 8-bit meaning; the message names the file."""


class ImageHeader(NamedTuple):
    width: int
    height: int
    fast: bool  # decoded by libjpeg-turbo directly (else by Pillow)


def read_header(data: bytes, name: str) -> ImageHeader:
    """The size of an encoded image, read from its header only (no pixel is decoded)."""
    from PIL import Image

    _check_bytes(data, name)

    try:
        if simplejpeg is not None and data.startswith(_JPEG_MAGIC):
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            return ImageHeader(width, height, colorspace in _FAST_JPEG_COLORSPACES)
        with Image.open(io.BytesIO(data)) as im:
            return ImageHeader(im.width, im.height, False)
    except Exception as err:  # both libraries raise several types for broken files
        raise UnreadableImageError(f"image {name} cannot be read ({err})") from err


def decode_rgb(data: bytes, name: str, *, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an encoded image into an RGB uint8 array (H, W, 3).

    Args:
        data: the file's bytes.
        name: how errors name the image (a path, or ``shard.tar:member``).
        min_size: ``(width, height)`` the result must at least have. A JPEG may then be decoded at 1/2, 1/4 or 1/8
            of its size (DCT scaling); other formats are always decoded whole. ``None``: full size.

    Raises:
        UnreadableImageError: the data is not a decodable image, or its pixel values cannot be mapped to 8 bits.
    """
    from PIL import Image

    _check_bytes(data, name)
    try:
        if simplejpeg is not None and data.startswith(_JPEG_MAGIC):
            header = read_header(data, name)
            if header.fast:
                k = _dct_scale(header.width, header.height, min_size)
                # min_factor pins the factor to k: by default simplejpeg also picks 7/8, 3/4, ... (slower, and the
                # crop would then be shrunk by a non-integer factor before its own resize)
                return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-header.width // k),
                                              min_height=-(-header.height // k), min_factor=k)
        with Image.open(io.BytesIO(data)) as im:
            if min_size is not None and im.format == "JPEG":
                im.draft("RGB", min_size)  # DCT scaling; keeps the image at least min_size
            return to_rgb_array(im, name)
    except UnreadableImageError:
        raise
    except Exception as err:
        raise UnreadableImageError(f"image {name} cannot be decoded ({err})") from err


def decode_jpegs(data: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Decode JPEGs (each a 1-D uint8 CPU tensor of the file's bytes) on ``device`` into RGB uint8 (3, H, W) there.

    One call for the whole list: on CUDA nvJPEG decodes the batch together. Grey JPEGs come out as RGB.
    """
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError:  # TorchCodec is optional: torchvision (the train extra) has the same decoders
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return decode_jpeg(list(data), mode="RGB", device=device)


def jpeg_decoder() -> str:
    """Which library ``decode_jpegs`` uses here, with its version (for benchmark reports)."""
    try:
        import torchcodec
    except ImportError:
        import torchvision

        return f"torchvision {torchvision.__version__} (deprecated; pip install torchcodec)"
    return f"torchcodec {torchcodec.__version__}"


def _check_bytes(data: object, name: str) -> None:
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"image {name}: data must be the encoded file's bytes, got {type(data).__name__}")


def _dct_scale(width: int, height: int, min_size: tuple[int, int] | None) -> int:
    """The largest of 1, 2, 4, 8 that keeps a (width, height) image at least min_size after scaling by 1/k."""
    k = 1
    if min_size is None:
        return k
    while k < 8 and -(-width // (2 * k)) >= min_size[0] and -(-height // (2 * k)) >= min_size[1]:
        k *= 2
    return k


def to_rgb_array(im: Image.Image, name: str) -> np.ndarray:
    """An RGB uint8 array (H, W, 3) of a Pillow image of any mode, scaling high bit depths instead of clipping.

    Pillow's own ``convert("RGB")`` clips 16-bit and float pixels to 255 (and truncates floats in [0, 1] to 0), so
    those modes are converted here.
    """
    mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):  # 16-bit grey (old Pillow: "I" for PNG)
        pixels = np.asarray(im).astype(np.uint32)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise UnreadableImageError(f"image {name}: 16-bit pixels outside 0..65535")
        grey = ((pixels * 255 + 32767) // 65535).astype(np.uint8)  # rounds; 65535 -> 255
    elif mode == "F":
        pixels = np.asarray(im, dtype=np.float32)
        finite = np.isfinite(pixels).all()
        low, high = (float(pixels.min()), float(pixels.max())) if finite else (float("nan"), float("nan"))
        if not finite or low < 0.0 or high > 1.0:
            raise UnreadableImageError(
                f"image {name} holds 32-bit float pixels in [{low}, {high}]; expected finite values in [0, 1] "
                "(0 = black, 1 = white). Convert it to an 8- or 16-bit image"
            )
        grey = np.rint(pixels * 255.0).astype(np.uint8)
    elif mode in ("I", "I;32", "I;32B", "I;32L"):
        raise UnreadableImageError(
            f"image {name} holds 32-bit integer pixels ({im.format} mode {mode}), whose brightness range is not "
            "defined; convert it to an 8- or 16-bit image"
        )
    else:
        return np.array(im.convert("RGB"))  # writable: torch.from_numpy warns about read-only arrays
    return np.repeat(grey[:, :, None], 3, axis=2)  # grey -> RGB


# ---------------------------------------------------------------------------------------------- folders


def _is_readable_image(path: Path) -> bool:
    from PIL import Image  # the train extra's packages are imported where used (the train and eval extras)

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
