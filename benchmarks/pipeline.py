"""Input pipeline benchmark: images per second per CPU core, side by side in one process.

    python benchmarks/pipeline.py              # the README table (a few minutes)
    python benchmarks/pipeline.py --tiny       # seconds: CI smoke test

What one image costs, from file to its place in a batch (read the file, decode, random resized crop to 224 px,
flip, batch of 32; the old pipeline also converts to float and normalises, which the new one leaves to the GPU):

  - "PIL + torchvision (old)": ``Image.open().convert("RGB")``, torchvision RandomResizedCrop(bicubic) +
    RandomHorizontalFlip + ToTensor + Normalize, default collate: what ``mae-pretrain --data`` did before;
  - "torchvision.io + uint8": ``torchvision.io.decode_jpeg`` whole, then our uint8 crop/resize;
  - "Pillow draft + uint8": our pipeline with Pillow decoding the JPEG (``draft``: DCT scaling), i.e. without
    simplejpeg;
  - "simplejpeg DCT + uint8 (default)": our pipeline as ``mae-pretrain`` runs it;
  - "default, on --max-side copies": our default pipeline on copies that ``mae-make-shards --max-side`` (shorter side
    4x the crop, 896 px) made once; only for sets with larger images. The one-time conversion's CPU time per image
    is printed below the table;
  - "floor: entropy decoding alone": not a pipeline but the bound on any of them that reads the whole file with
    libjpeg-turbo: the Huffman decoding of every coefficient, which no DCT scale skips (decoded to grey at 1/8
    scale, so almost nothing else runs). Its "vs old" is the most a CPU decoder of these files could gain.

Test images are made here from scikit-image's photographs (no download): resized with Pillow (bicubic) to an
ImageNet-like 500x375 / 375x500 and to 3-megapixel 2048x1536 / 1536x2048, saved as JPEG quality 90.
Timing: CPU time of this process (``time.process_time``) with torch on one thread, so the numbers are per core and
steady on a shared machine; rounds alternate between the candidates and the table reports medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms
from torchvision.io import decode_jpeg

from mae.config import IMAGENET_MEAN, IMAGENET_STD
from mae.io import images as decode
from mae.train.data import augment
from mae.train.data.augment import (
    MaskingSpec,
    augment_sample,
    collate_samples,
    crop_resize,
    sample_crop,
    sample_flip,
    sample_generator,
)
from mae.train.data.make_shards import check_max_side, shrink_image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "motorcycle")
SETS = {"ImageNet-sized (500x375)": (500, 375), "3 megapixels (2048x1536)": (2048, 1536)}
SIZE, BATCH, PATCHES = 224, 32, 196
SHRUNK = "default, on --max-side copies"


def make_jpegs(folder: Path, size: tuple[int, int], count: int) -> list[Path]:
    from skimage import data as skdata

    paths = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        pixels = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
        image = Image.fromarray(pixels).convert("RGB")
        w, h = size if i % 2 == 0 else size[::-1]  # landscape and portrait
        path = folder / f"{name}_{w}x{h}_{i}.jpg"
        image.resize((w, h), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def old_pipeline(size: int):
    transform = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])

    def sample(path: Path, index: int):
        seed = int(np.random.SeedSequence([0, 0, index]).generate_state(1, np.uint64)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with Image.open(path) as im:
                img = transform(im.convert("RGB"))
            return img, torch.rand(PATCHES)

    return sample, default_collate


def torchvision_io_pipeline(size: int):
    def sample(path: Path, index: int):
        chw = decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))  # (3, H, W) HWC memory
        gen = sample_generator(0, 0, index)
        box, flip = sample_crop(chw.shape[2], chw.shape[1], gen), sample_flip(gen)
        return crop_resize(chw.permute(1, 2, 0).numpy(), box, size, flip), torch.rand(PATCHES, generator=gen)

    return sample, collate_samples


def our_pipeline(size: int, *, simplejpeg: bool):
    def sample(path: Path, index: int):
        saved = decode.simplejpeg
        decode.simplejpeg = saved if simplejpeg else None
        try:
            return augment_sample(path.read_bytes(), str(path), size=size, noise=MaskingSpec(PATCHES), seed=0, epoch=0,
                                  index=index)
        finally:
            decode.simplejpeg = saved

    return sample, collate_samples


def shrunk_copies(paths: list[Path], folder: Path, max_side: int) -> tuple[dict[Path, Path], float]:
    """What ``mae-make-shards --max-side`` stores for each file (itself when small enough), and the CPU seconds per
    image the conversion took (read, decode, resize, encode; writing excluded)."""
    folder.mkdir()
    copies, seconds = {}, 0.0
    for path in paths:
        start = time.process_time()
        data = shrink_image(path.read_bytes(), str(path), max_side)
        seconds += time.process_time() - start
        copies[path] = path
        if data is not None:
            copies[path] = folder / f"{path.stem}.jpg"
            copies[path].write_bytes(data)
    return copies, seconds / len(paths)


def on_copies(candidate, copies: dict[Path, Path]):
    sample, collate = candidate
    return (lambda path, index: sample(copies[path], index)), collate


def entropy_floor():
    def sample(path: Path, index: int):
        return decode.simplejpeg.decode_jpeg(path.read_bytes(), colorspace="GRAY", min_width=1, min_height=1)

    return sample, len  # nothing to batch: the decoded grey pixels are thrown away


def time_candidate(candidate, paths: list[Path], batch: int) -> float:
    """CPU seconds per image for one pass over ``paths`` in batches."""
    sample, collate = candidate
    start = time.process_time()
    for first in range(0, len(paths), batch):
        collate([sample(p, first + i) for i, p in enumerate(paths[first:first + batch])])
    return (time.process_time() - start) / len(paths)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few small images, one round (smoke test)")
    parser.add_argument("--images", type=int, default=64, help="images per set and round (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--reducing-gap", type=float, default=augment.REDUCING_GAP,
                        help=f"what-if: the DCT-scaling rule's gap (default {augment.REDUCING_GAP}, as mae-pretrain)")
    parser.add_argument("--max-side", type=int, help=f"shorter side of the mae-make-shards --max-side copies "
                        f"(default {4 * SIZE}: 4x the crop)")
    args = parser.parse_args(argv)
    for name in ("images", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    try:
        check_max_side(args.max_side)
    except ValueError as err:
        parser.error(str(err))
    if args.reducing_gap < 1:
        parser.error(f"--reducing-gap must be >= 1, got {args.reducing_gap}")
    augment.REDUCING_GAP = args.reducing_gap
    if decode.simplejpeg is None:
        parser.error("simplejpeg is not installed: pip install 'mae-pytorch[train]'")
    torch.set_num_threads(1)
    sets = {"tiny (160x120)": (160, 120)} if args.tiny else SETS
    count, rounds, size = (4, 1, 32) if args.tiny else (args.images, args.rounds, SIZE)
    max_side = args.max_side or (2 if args.tiny else 4) * size  # tiny: 64, so the smoke test shrinks its images
    pipelines = {
        "PIL + torchvision (old)": old_pipeline(size),
        "torchvision.io + uint8": torchvision_io_pipeline(size),
        "Pillow draft + uint8": our_pipeline(size, simplejpeg=False),
        "simplejpeg DCT + uint8 (default)": our_pipeline(size, simplejpeg=True),
    }
    rows, conversions = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for set_name, image_size in sets.items():
            folder = Path(tmp) / f"{image_size[0]}x{image_size[1]}"
            folder.mkdir()
            paths = make_jpegs(folder, image_size, count)
            candidates = dict(pipelines)
            if min(image_size) > max_side:
                copies, conversions[set_name] = shrunk_copies(paths, Path(tmp, f"{folder.name}-shrunk"), max_side)
                candidates[SHRUNK] = on_copies(pipelines["simplejpeg DCT + uint8 (default)"], copies)
            candidates["floor: entropy decoding alone"] = entropy_floor()
            for candidate in candidates.values():  # warm-up: imports, caches, first-call costs
                time_candidate(candidate, paths[:2], BATCH)
            seconds = {name: [] for name in candidates}
            for r in range(rounds):
                order = list(candidates) if r % 2 == 0 else list(candidates)[::-1]
                for name in order:
                    seconds[name].append(time_candidate(candidates[name], paths, BATCH))
            base = statistics.median(seconds["PIL + torchvision (old)"])
            mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
            for name, values in seconds.items():
                per_image = statistics.median(values)
                rows.append({"set": set_name, "candidate": name, "img_per_s_per_core": 1 / per_image,
                             "ratio": base / per_image, "mean_file_kb": mean_kb, "rounds_s": values})
    print(f"| images | pipeline | img/s per core | vs old |  (crop {size} px, reducing gap {args.reducing_gap}, "
          f"batch {BATCH}, {count} JPEGs q90 per set, median of {rounds} rounds, CPU time, 1 thread)")
    print("|---|---|---:|---:|")
    for row in rows:
        print(f"| {row['set']}, {row['mean_file_kb']:.0f} KB | {row['candidate']} | "
              f"{row['img_per_s_per_core']:.0f} | {row['ratio']:.2f}x |")
    for set_name, seconds in conversions.items():
        print(f"{SHRUNK}, {set_name}: one-time conversion {seconds * 1000:.1f} ms of CPU per image "
              f"(--max-side {max_side})")
    machine = {"cpu": _cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
               "pillow": Image.__version__, "simplejpeg": getattr(decode.simplejpeg, "__version__", None),
               "command": "python benchmarks/pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"machine: {machine}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": machine, "max_side": max_side,
                                               "conversion_s_per_image": conversions}, indent=1))
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"



if __name__ == "__main__":
    sys.exit(main())
