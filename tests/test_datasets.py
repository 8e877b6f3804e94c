"""Image folders and decoding: the scan (corrupt files, symbolic-link cycles), every pixel format mapped to RGB uint8
without clipping, and samples that are a pure function of (seed, epoch, index)."""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mae.io.images import UnreadableImageError, decode_rgb, scan_image_folder
from mae.train.data.augment import MaskingSpec
from mae.train.data.datasets import ImageFiles, PretrainSamples


def write_images(folder, n, size=(40, 48), seed=0):
    """n small random RGB PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (grey (H, W) or RGB (H, W, 3)), written by hand: Pillow cannot write 16-bit RGB."""
    h, w = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- scan


def test_scan_finds_tree_and_flat_folders(tmp_path):
    write_images(tmp_path / "tree" / "cats", 2)
    write_images(tmp_path / "tree" / "dogs", 3)
    write_images(tmp_path / "flat", 4)
    tree, skipped = scan_image_folder(tmp_path / "tree")
    assert len(tree) == 5 and not skipped and tree == sorted(tree)
    flat, _ = scan_image_folder(tmp_path / "flat")
    assert len(flat) == 4


def test_scan_skips_corrupt_files_with_a_count(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\) out of 5"):
        readable, skipped = scan_image_folder(tmp_path)
    assert len(readable) == 3 and sorted(p.name for p in skipped) == ["broken.jpg", "empty.png"]


def test_scan_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image file"):
        scan_image_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with warnings.catch_warnings(), pytest.raises(ValueError, match="none of its 1 image files could be read"):
        warnings.simplefilter("ignore")
        scan_image_folder(tmp_path / "bad")


def test_scan_counts_each_image_once_through_symlink_cycles(tmp_path):
    """A link back to an ancestor used to repeat every image ~40 times (until the path got too long); two such links
    made the walk exponential (it never ended). Each real folder is now walked once."""
    root = tmp_path / "data"
    write_images(root / "a", 2)
    write_images(root / "b", 1)
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # cycle 1
    (root / "b" / "again").symlink_to(root / "a", target_is_directory=True)  # a second way into a/, and cycle 2
    (root / "b" / "self").symlink_to(root / "b", target_is_directory=True)  # cycle 3
    result = {}
    scan = threading.Thread(target=lambda: result.update(found=scan_image_folder(root)), daemon=True)
    scan.start()
    scan.join(timeout=60)
    assert not scan.is_alive(), "the scan did not finish: it follows symbolic-link cycles"
    readable, skipped = result["found"]
    assert sorted(p.name for p in readable) == ["img00.png", "img00.png", "img01.png"] and not skipped
    assert {p.parent.name for p in readable} == {"a", "b"}  # reached by the real paths, which sort first


def test_scan_follows_a_link_to_a_folder_outside(tmp_path):
    write_images(tmp_path / "elsewhere", 2)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    readable, _ = scan_image_folder(tmp_path / "data")
    assert len(readable) == 2


# ---------------------------------------------------------------------------------------------- pixel formats


def test_16_bit_png_is_scaled_not_clipped():
    """Pillow's convert('RGB') clipped 16-bit grey to 255 (99.6% of this ramp became white)."""
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    expected = np.round(ramp / 257).astype(np.uint8)
    grey = decode_rgb(encoded(Image.fromarray(ramp), "PNG"), "grey16.png")
    assert grey.dtype == np.uint8 and grey.shape == (64, 64, 3)
    np.testing.assert_array_equal(grey[..., 0], expected)
    assert (grey == 255).mean() < 0.01
    rgb = decode_rgb(png16(np.stack([ramp, ramp // 2, 65535 - ramp], -1)), "rgb16.png")  # Pillow keeps the high byte
    assert np.abs(rgb.astype(int) - np.stack([expected, ramp // 2 / 257, (65535 - ramp) / 257], -1)).max() <= 1


def test_float_tiff_in_unit_range_is_scaled_and_others_are_refused(tmp_path):
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    pixels = decode_rgb(encoded(Image.fromarray(ramp), "TIFF"), "unit.tif")
    np.testing.assert_array_equal(pixels[..., 1], np.rint(ramp * 255).astype(np.uint8))  # was all 0 (truncated)
    with pytest.raises(UnreadableImageError, match=r"wide\.tif.*float pixels in \[0.0, 1000.0\].*expected"):
        decode_rgb(encoded(Image.fromarray(ramp * 1000), "TIFF"), "wide.tif")
    with pytest.raises(UnreadableImageError, match=r"int32\.tif.*32-bit integer"):
        decode_rgb(encoded(Image.fromarray((ramp * 1000).astype(np.int32)), "TIFF"), "int32.tif")
    # in a folder, such a file is skipped at the scan, with the count, never trained on
    write_images(tmp_path, 1)
    (tmp_path / "wide.tif").write_bytes(encoded(Image.fromarray(ramp * 1000), "TIFF"))
    with pytest.warns(UserWarning, match=r"skipped 1 .*wide\.tif"):
        readable, _ = scan_image_folder(tmp_path)
    assert [p.name for p in readable] == ["img00.png"]


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "1"])
def test_fallback_formats_match_pillow(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    data = encoded(image, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    pixels = decode_rgb(data, f"x.{fmt.lower()}")
    assert pixels.shape == (24, 40, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - expected).max() <= 2  # greyscale JPEG: libjpeg-turbo vs Pillow's decoder


def test_jpeg_is_decoded_at_reduced_scale_only_when_asked():
    data = encoded(Image.fromarray(np.zeros((300, 400, 3), np.uint8)), "JPEG")
    assert decode_rgb(data, "x.jpg").shape == (300, 400, 3)
    assert decode_rgb(data, "x.jpg", min_size=(100, 75)).shape == (75, 100, 3)  # 1/4
    assert decode_rgb(data, "x.jpg", min_size=(101, 75)).shape == (150, 200, 3)  # 1/4 too small: 1/2
    assert decode_rgb(data, "x.jpg", min_size=(300, 10)).shape == (300, 400, 3)  # never 3/4, 5/8, ...
    with pytest.raises(UnreadableImageError, match=r"x\.jpg cannot be"):
        decode_rgb(data[: len(data) // 2], "x.jpg")


# ---------------------------------------------------------------------------------------------- samples


def photo_sources(n: int) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8), f"photo {i}") for i in range(n)]


def test_samples_are_a_function_of_seed_epoch_index():
    ds = PretrainSamples(photo_sources(2), img_size=16, noise=MaskingSpec(4), seed=3, repeat=2)
    assert len(ds) == 4
    img, noise = ds[1]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and noise.shape == (4,)
    torch.manual_seed(123)  # the global generator must neither matter nor be disturbed
    before = torch.get_rng_state()
    again = ds[1]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(img, again[0]) and torch.equal(noise, again[1])
    assert not torch.equal(ds[3][1], noise)  # another index: another crop and mask
    ds.set_epoch(1)
    assert not torch.equal(ds[1][1], noise)  # another epoch: another draw


def test_samples_do_not_depend_on_the_number_of_workers():
    ds = PretrainSamples(photo_sources(4), img_size=16, noise=MaskingSpec(4), seed=0, repeat=2)
    ds.set_epoch(3)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        batches[workers] = [torch.cat([img.flatten(1).float(), noise], 1) for img, noise in loader]
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a, b)


def test_a_file_that_cannot_be_decoded_stops_with_its_name(tmp_path):
    write_images(tmp_path, 1)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.jpg")
    full = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])  # header intact, pixel data cut
    readable, skipped = scan_image_folder(tmp_path)
    assert len(readable) == 2 and not skipped  # the scan only reads headers
    samples = PretrainSamples(ImageFiles(readable), img_size=16, noise=MaskingSpec(4), seed=0)
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg.*cannot be decoded.*resume"):
        samples[0]
