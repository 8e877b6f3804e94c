"""mae-make-shards: pack a folder of images into tar shards for ``mae-pretrain --data OUT_DIR``.

    mae-make-shards /data/imagenet/train /data/imagenet-shards --shard-size 1000

The images are those ``mae-pretrain --data SRC_DIR`` would train on (unreadable files skipped and counted), shuffled
with ``--seed`` so that neighbours in a shard come from all over the folder (class folders are mixed), and stored
unchanged (no re-encoding) as ``00000042.jpg`` members of ``shard-000000.tar``, ``shard-000001.tar``, ... Each shard
is written under a temporary name and renamed when complete; ``manifest.json`` (shard names, image counts, sizes,
SHA-256) is written last, so a folder with a manifest is complete. OUT_DIR must be new or empty: nothing is replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write, write_json
from .datasets import scan_image_folder
from .shards import MANIFEST_FILE, MANIFEST_FORMAT, index_shard

__all__ = ["main", "make_shards"]


def make_shards(src: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = 1000, seed: int = 0) -> dict:
    """Write the shards and the manifest; returns the manifest.

    Raises:
        ValueError: bad ``shard_size``, ``out`` not empty, or ``src`` without readable images.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be a positive number of images per shard, got {shard_size!r}")
    out_dir = Path(out)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"OUT_DIR {str(out)!r} exists and is not an empty folder; choose a new folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files, skipped = scan_image_folder(src, name="SRC_DIR")
    for w in caught:
        print(f"mae-make-shards: {w.message}", file=sys.stderr)
    files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for number, first in enumerate(range(0, len(files), shard_size)):
        name = f"shard-{number:06d}.tar"
        entries.append(_write_shard(out_dir / name, files[first:first + shard_size], first))
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "source": str(src), "seed": seed,
                "num_samples": len(files), "num_skipped": len(skipped), "shards": entries}
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def _write_shard(path: Path, files: Sequence[Path], first_key: int) -> dict:
    entry: dict = {"name": path.name}

    def write(temp: Path) -> None:
        with open(temp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, file in enumerate(files, first_key):
                data = file.read_bytes()
                info = tarfile.TarInfo(f"{key:08d}{file.suffix.lower()}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644  # no owner or time: same input, same bytes
                tar.addfile(info, io.BytesIO(data))
        count = len(index_shard(temp).offsets)  # read back: every image is where the reader will look for it
        if count != len(files):
            raise ValueError(f"shard {str(path)!r}: wrote {len(files)} images but reads back {count}")
        digest = hashlib.sha256()
        with open(temp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        entry.update(count=count, size=temp.stat().st_size, sha256=digest.hexdigest())

    atomic_write(path, write)  # a temporary name in the same folder, fsync'ed, renamed; removed on any error
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mae-make-shards``. Returns the process exit code."""
    parser = argparse.ArgumentParser(prog="mae-make-shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder of images (flat or one subfolder per class)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder for the shards and manifest.json")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards (default 0)")
    args = parser.parse_args(argv)
    try:
        manifest = make_shards(args.src_dir, args.out_dir, shard_size=args.shard_size, seed=args.seed)
    except (ValueError, FileNotFoundError) as err:
        print(f"mae-make-shards: error: {err}", file=sys.stderr)
        return 2
    print(f"mae-make-shards: {manifest['num_samples']} images in {len(manifest['shards'])} shard(s) under "
          f"{args.out_dir} ({manifest['num_skipped']} unreadable file(s) skipped); train with "
          f"mae-pretrain --data {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
