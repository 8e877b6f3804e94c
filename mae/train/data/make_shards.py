"""mae-make-shards: pack a folder of images into tar shards for ``mae-pretrain --data OUT_DIR``.

    mae-make-shards /data/imagenet/train /data/imagenet-shards --shard-size 1000
    mae-make-shards /data/photos /data/photo-shards --max-side 896      # big photos, 224-px training

The images are those ``mae-pretrain --data SRC_DIR`` would train on (unreadable files skipped and counted), shuffled
with ``--seed`` so that neighbours in a shard come from all over the folder (class folders are mixed), and stored
unchanged (no re-encoding) as ``00000042.jpg`` members of ``shard-000000.tar``, ``shard-000001.tar``, ... Each shard
is written under a temporary name and renamed when complete. ``index.npy`` then records where every image lies in its
shard (byte offset and size, as the reader's header scan finds them), so that ``mae-pretrain`` reads that one small
file at start-up instead of every tar header (``manifest``'s docstring). ``manifest.json`` (shard names, image counts,
sizes, SHA-256, and the index's size and SHA-256) is written last, so a folder with a manifest is complete. OUT_DIR
must be new or empty: nothing is replaced.

``--max-side N`` down-scales large photos once, instead of decoding their megapixels again every epoch (on big
photos, reading the whole JPEG bounds the training pipeline whatever its DCT scaling). An image whose shorter side
exceeds N is decoded to RGB as training decodes it (``decode_rgb``: 16-bit, float and grey converted, alpha dropped),
resized with the antialiased bicubic that crops training images (``augment.crop_resize``, Pillow's filter) so that
its shorter side is exactly N (aspect ratio kept, longer side rounded), and stored as an RGB JPEG of quality 95
(Pillow's default chroma subsampling) named ``00000042.jpg``; images at or below N are stored unchanged. A JPEG is
decoded at 1/2, 1/4 or 1/8 scale only while it stays at least ``augment.REDUCING_GAP`` (2) times the target size,
which keeps the conversion fast without softening it.

The cost is one lossy re-encode at q95 (on scikit-image photos shrunk to 48-200 px: 1.4-4.4 grey levels of mean
absolute difference from a direct Pillow resize, nearly all of it the re-encode). EXIF and ICC data are not kept and
EXIF orientation is not applied, as in training: the copies hold the pixels as stored, which a viewer that honoured
the original's orientation tag shows turned. Use it for photos much larger than 4x the training crop: with
``--max-side 896`` for 224-px training, even the smallest RandomResizedCrop (20% of the area, aspect 3/4) keeps at
least 347 px per side, so no crop is upsampled. N below 32 is refused: the smallest crop a model here trains on is
32 px (``mae_vit_test``), and a smaller N would upsample every crop. A large image that cannot be decoded (a readable
header over broken data) is skipped, named in a warning and counted in ``num_skipped``, like the files the folder
scan cannot open: one bad file does not cost the shards already written.

If a conversion stops part way (an interrupt, a full disk), OUT_DIR holds complete shards but no ``manifest.json``;
``mae-pretrain`` does not take such a folder as a manifest folder, and the converter asks for a new OUT_DIR.
"""

from __future__ import annotations

import argparse
import io
import math
import numbers
import os
import sys
import tarfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..._checks import check_int
from ...io.atomic import atomic_write, write_json
from ...io.images import UnreadableImageError, decode_rgb, read_header, scan_image_folder
from ...runtime.cli import run_command
from . import augment
from .manifest import INDEX_FILE, MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, ShardIndex, index_rows
from .shards import file_sha256, index_shard

__all__ = ["JPEG_QUALITY", "MIN_MAX_SIDE", "build_parser", "check_max_side", "main", "make_shards", "shrink_image"]

MIN_MAX_SIDE = 32  # the smallest crop a model here trains on (mae_vit_test): a lower --max-side upsamples every crop
JPEG_QUALITY = 95  # of the re-encoded images: high enough that the re-encode is small next to the resampling


def check_max_side(max_side: object) -> int | None:
    """``max_side`` as an int (or None), or a ValueError naming ``--max-side``, the value and what is expected."""
    if max_side is None:
        return None
    if isinstance(max_side, bool) or not isinstance(max_side, numbers.Integral):
        raise ValueError(f"--max-side must be a whole number of pixels (or None: keep every image as is), got "
                         f"{max_side!r} of type {type(max_side).__name__}")
    if max_side < MIN_MAX_SIDE:
        raise ValueError(f"--max-side must be at least {MIN_MAX_SIDE} pixels, got {max_side}: images shrunk below the "
                         f"smallest training crop ({MIN_MAX_SIDE} px, mae_vit_test) would have every crop upsampled; "
                         "use about 4x the crop side (e.g. 896 for 224-px training)")
    return int(max_side)


def shrink_image(data: bytes, name: str, max_side: int) -> bytes | None:
    """The image re-encoded with its shorter side ``max_side`` px, or None when that side is already ``<= max_side``.

    What is decoded, how it is resized and stored: the module docstring (``--max-side``). The aspect ratio is kept,
    the longer side rounded.

    Args:
        data: the file's bytes.
        name: how errors name the image.
        max_side: the shorter side of the result (at least ``MIN_MAX_SIDE``).

    Raises:
        ValueError: a bad ``max_side``; ``UnreadableImageError`` (a ValueError) when the image cannot be decoded.
    """
    from PIL import Image  # the train extra's packages are imported where used (mae.train.config.require_train_extra)

    max_side = check_max_side(max_side)
    if max_side is None:
        raise ValueError("max_side must be a number of pixels here, got None")
    width, height, _ = read_header(data, name)
    if min(width, height) <= max_side:
        return None
    if width <= height:
        size = (max_side, round(height * max_side / width))  # (width, height)
    else:
        size = (round(width * max_side / height), max_side)
    gap = augment.REDUCING_GAP  # read at call time: the one DCT-scaling rule of training and conversion
    min_size = (math.ceil(size[0] * gap), math.ceil(size[1] * gap))
    pixels = decode_rgb(data, name, min_size=min_size)  # (h, w, 3) uint8, h >= gap * size[1] or the full image
    whole = augment.CropBox(0, 0, pixels.shape[0], pixels.shape[1])
    resized = augment.crop_resize(pixels, whole, (size[1], size[0]))  # (3, H, W) channels-last: (H, W, 3) in memory
    small = Image.fromarray(resized.permute(1, 2, 0).numpy())
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def make_shards(src: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = 1000, seed: int = 0,
                max_side: int | None = None) -> dict:
    """Write the shards and the manifest; returns the manifest.

    Args:
        max_side: re-encode images whose shorter side exceeds it down to that side (``shrink_image``); None (the
            default) stores every file unchanged. The manifest records it and ``num_resized``.

    Raises:
        ValueError: bad ``shard_size`` or ``max_side``, ``out`` not empty, or ``src`` without readable images.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be a positive number of images per shard, got {shard_size!r}")
    max_side = check_max_side(max_side)
    seed = check_int(seed, "--seed", low=0)
    out_dir = Path(out)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        unfinished = out_dir.is_dir() and not (out_dir / MANIFEST_FILE).exists() and any(out_dir.glob("shard-*.tar"))
        hint = (" (it holds shards of a conversion that did not finish: no manifest.json; remove the folder to start "
                "again)") if unfinished else ""
        raise ValueError(f"OUT_DIR {str(out)!r} exists and is not an empty folder{hint}; choose a new folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files, skipped = scan_image_folder(src, name="SRC_DIR")
    for w in caught:
        print(f"mae-make-shards: {w.message}", file=sys.stderr)
    files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, indexes, num_resized, undecodable = [], [], 0, []
    for first in range(0, len(files), shard_size):
        name = f"shard-{len(entries):06d}.tar"
        shard = _write_shard(out_dir / name, files[first:first + shard_size], first, max_side)
        if shard.entry is not None:  # None: every image of this shard was undecodable
            entries.append(shard.entry)
            indexes.append(shard.index)
        num_resized += shard.resized
        undecodable += shard.undecodable
    if not entries:  # every image failed to decode: a manifest of no shard would be refused by the reader
        raise ValueError(f"none of the {len(files)} image file(s) of SRC_DIR {str(src)!r} could be decoded for "
                         f"--max-side {max_side} (e.g. {', '.join(undecodable[:3])}); no shard or manifest written")
    if undecodable:
        print(f"mae-make-shards: skipped {len(undecodable)} image file(s) that could not be decoded for --max-side "
              f"(e.g. {', '.join(undecodable[:3])})", file=sys.stderr)
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "source": str(src), "seed": seed,
                "num_samples": len(files) - len(undecodable), "num_skipped": len(skipped) + len(undecodable),
                "max_side": max_side, "num_resized": num_resized, "shards": entries,
                "index": _write_index(out_dir / INDEX_FILE, indexes)}
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def _write_index(path: Path, indexes: list[ShardIndex]) -> dict:
    """Write the shards' index (``manifest``'s module docstring: one (N, 2) int64 .npy) and return its manifest
    entry: ``name``, ``size`` (bytes) and ``sha256``."""
    entry: dict = {"name": path.name}

    def write(temp: Path) -> None:
        with open(temp, "wb") as f:  # np.save on a path would append ".npy" to the temporary name
            np.save(f, index_rows(indexes), allow_pickle=False)
        with open(temp, "rb") as f:
            entry.update(size=temp.stat().st_size, sha256=file_sha256(f))

    atomic_write(path, write)
    return entry


class _EmptyShard(Exception):
    """Every image of a shard was skipped: its temporary file is removed and no shard is written."""


class _Shard(NamedTuple):
    """What writing one shard produced."""

    entry: dict | None  # its manifest entry (name, count, skipped, size, sha256); None if no image was left
    index: ShardIndex | None  # where its images lie, as the reader's index_shard finds them
    resized: int  # images re-encoded smaller (--max-side)
    undecodable: list[str]  # names of the images skipped because they could not be decoded


def _write_shard(path: Path, files: Sequence[Path], first_key: int, max_side: int | None) -> _Shard:
    """Write one shard and read its index back from the written file."""
    entry: dict = {"name": path.name}
    found: list[ShardIndex] = []
    resized, undecodable = 0, []

    def write(temp: Path) -> None:
        nonlocal resized
        with open(temp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, file in enumerate(files, first_key):
                data, suffix = file.read_bytes(), file.suffix.lower()
                try:
                    small = None if max_side is None else shrink_image(data, repr(str(file)), max_side)
                except UnreadableImageError:
                    undecodable.append(str(file))
                    continue
                if small is not None:
                    data, suffix = small, ".jpg"
                    resized += 1
                info = tarfile.TarInfo(f"{key:08d}{suffix}")  # keys keep their place: a skipped file leaves a gap
                info.size, info.mtime, info.mode = len(data), 0, 0o644  # no owner or time: same input, same bytes
                tar.addfile(info, io.BytesIO(data))
        expected = len(files) - len(undecodable)
        if expected == 0:
            raise _EmptyShard
        # Read back with the reader's own header scan: the recorded index is, by construction, what index_shard
        # finds, and every image is where the reader will look for it.
        found.append(index_shard(temp))
        count = len(found[0].offsets)
        if count != expected:
            raise ValueError(f"shard {str(path)!r}: wrote {expected} images but reads back {count}")
        with open(temp, "rb") as f:
            digest = file_sha256(f)
        entry.update(count=count, skipped=found[0].skipped, size=temp.stat().st_size, sha256=digest)

    try:
        atomic_write(path, write)  # a temporary name in the same folder, fsync'ed, renamed; removed on any error
    except _EmptyShard:
        return _Shard(None, None, resized, undecodable)
    return _Shard(entry, found[0], resized, undecodable)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``mae-make-shards``."""
    parser = argparse.ArgumentParser(prog="mae-make-shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder of images (flat or one subfolder per class)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder for the shards and manifest.json")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards (default 0)")
    parser.add_argument("--max-side", type=int, default=None, metavar="N",
                        help="shrink images whose shorter side exceeds N px to shorter side N, once (an RGB JPEG "
                             f"q{JPEG_QUALITY}), so training no longer decodes megapixels every epoch; about 4x the "
                             "crop, e.g. 896 for 224-px training. Default: store every file unchanged")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mae-make-shards``. Returns the process exit code."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        manifest = make_shards(args.src_dir, args.out_dir, shard_size=args.shard_size, seed=args.seed,
                               max_side=args.max_side)
        resized = ("" if args.max_side is None
                   else f", {manifest['num_resized']} resized to shorter side {args.max_side}")
        print(f"mae-make-shards: {manifest['num_samples']} images in {len(manifest['shards'])} shard(s) under "
              f"{args.out_dir} ({manifest['num_skipped']} unreadable file(s) skipped{resized}); train with "
              f"mae-pretrain --data {args.out_dir}")

    def next_step() -> str:
        if not any(Path(args.out_dir).glob("shard-*.tar")):
            return "no shard was written: start again"
        return (f"{args.out_dir} holds the shards finished so far but no {MANIFEST_FILE}: remove it and start again "
                "(the source images are untouched)")

    return run_command("mae-make-shards", body, next_step)


if __name__ == "__main__":
    sys.exit(main())
