"""The run's data: what ``--data`` names, turned into samples, batches for each process, and the figure batch.

``--data`` may be omitted (scikit-image's photographs), a folder of images (flat or one subfolder per class; see
``datasets``), or tar shards (``shards``): a ``mae-make-shards`` output folder, ``.tar`` files, a brace pattern such
as ``/data/train-{0000..0099}.tar``, or several of these joined by ``::``.

One global order per epoch, whatever the number of processes: the epoch's samples are a permutation of the global
sample indices drawn from ``(seed, epoch)`` (``GlobalOrder`` for folders and photographs, ``ShardSamples.epoch_order``
for shards), cut into global batches of ``batch_size * world_size``; rank ``r`` takes the r-th ``batch_size`` slice of
each, and the last ``len % (batch_size * world_size)`` samples are left out. ``Batches.set_epoch(..., start=S)``
skips the first ``S`` samples of that order, so a run stopped after ``S`` samples with N processes continues the
same epoch with M processes, every sample of the epoch used once across the stop.

Batches travel as uint8 (pinned on CUDA); the training step normalises them on its device with
``normalize_on_device``. With ``--decode-device cuda`` the workers leave JPEGs encoded and ``Batches`` makes each
batch's views on the training device (``finish_batch``) before handing it over. ``Batches`` also measures how long
the training loop waited for each batch: its share of the epoch is the data-wait fraction in the epoch summary
(docs/pretraining.md says how to size ``--num-workers`` from it).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from ...config import IMAGENET_MEAN, IMAGENET_STD
from ...io.images import scan_image_folder
from ...runtime.preemption import ignore_stop_signals
from .augment import MaskingSpec, center_view, collate_samples, finish_batch, normalize_on_device
from .datasets import SKIMAGE_HELD_OUT, SKIMAGE_TRAIN, ImageFiles, PretrainSamples, skimage_photos
from .shards import ShardSamples, is_shard_spec, read_index, resolve_shards

__all__ = ["DECODE_DEVICES", "Batches", "GlobalOrder", "RunData", "build_data", "build_loader", "data_seed",
           "decode_device_of", "normalize_on_device"]

DECODE_DEVICES = ("cpu", "cuda")  # where JPEGs are decoded: in the data-loader workers, or on the training GPU


class RunData(NamedTuple):
    dataset: PretrainSamples | ShardSamples
    figure_images: Tensor  # (B, C, H, W) normalised, for the reconstruction figure
    figure_caption: str
    description: dict  # what the run trained on, saved in train_config.json


def build_data(config, *, probe_remote: bool = True) -> RunData:
    """The training samples and the figure batch of a ``TrainConfig`` (``probe_remote``: check the size of each
    remote shard of a manifest folder; one process of a run does it, ``shards.resolve_shards``)."""
    model = config.model_config
    noise = MaskingSpec.of(model)
    size, samples = config.img_size, dict(img_size=config.img_size, noise=noise, seed=config.seed,
                                          repeat=config.repeat, encoded=config.decode_device != "cpu")
    if config.data is None:
        images = skimage_photos(SKIMAGE_TRAIN)
        # Each held-out photo whole and as its centre half, so the figure shows both coarse and fine structure.
        views = []
        for pixels, name in skimage_photos(SKIMAGE_HELD_OUT):
            h, w = pixels.shape[:2]
            views += [(pixels, name), (pixels[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2], name)]
        caption = f"held-out photos ({', '.join(SKIMAGE_HELD_OUT)}), never trained on"
        description = {"source": "scikit-image", "images": list(SKIMAGE_TRAIN), "held_out": list(SKIMAGE_HELD_OUT)}
        dataset = PretrainSamples(images, **samples)
    elif is_shard_spec(str(config.data)):
        shards, manifest = resolve_shards(str(config.data), probe_remote=probe_remote)
        checksums = None if manifest is None else [entry["sha256"] for entry in manifest["shards"]]
        index = None if manifest is None else read_index(str(config.data), manifest)  # None: read the headers
        dataset = ShardSamples(shards, **samples, sha256=checksums, index=index)
        views = dataset.figure_images(8)
        caption = f"training images from {config.data}"
        description = {"source": str(config.data), "format": "tar shards", "num_shards": len(shards),
                       "manifest": manifest is not None, "recorded_index": index is not None,
                       "num_skipped": dataset.skipped}
    else:
        paths, skipped = scan_image_folder(config.data)
        images = ImageFiles(paths)
        dataset = PretrainSamples(images, **samples)
        views = [images[i] for i in range(min(8, len(images)))]
        caption = f"training images from {config.data}"
        description = {"source": str(config.data), "num_files": len(paths), "num_skipped": len(skipped),
                       "skipped_examples": [str(p) for p in skipped[:10]]}
    figure = normalize_on_device(torch.stack([center_view(source, name, size) for source, name in views]),
                                 IMAGENET_MEAN, IMAGENET_STD)  # (B, C, H, W)
    num_images = dataset.num_images if isinstance(dataset, ShardSamples) else len(dataset.images)
    description.update(num_images=num_images, repeat=config.repeat,
                       samples_per_epoch=num_images * config.repeat)
    return RunData(dataset, figure, caption, description)


class GlobalOrder(Sampler[int]):
    """This rank's indices of an epoch of ``n`` samples in the global order (module docstring); ``start`` samples of
    the order are skipped. With one process it is ``torch.randperm(n)`` seeded by ``seed + epoch``."""

    def __init__(self, n: int, *, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.epoch, self.start = seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return (self.n - self.start) // (self.batch_size * self.world_size) * self.batch_size

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))[self.start:]
        b, g = self.batch_size, self.batch_size * self.world_size
        for q in range(len(self) // b):
            yield from order[q * g + self.rank * b:q * g + (self.rank + 1) * b].tolist()


class Batches:
    """An epoch's batches for this process (uint8 images (B, C, H, W), noise (B, L)), timing the waits for them.

    ``wait_seconds``: time spent inside ``next()`` of the loader during the current epoch (reset by ``set_epoch``),
    i.e. the time the training loop could not run because the next batch was not ready. With ``decode_on`` each
    batch is finished there (``finish_batch``) and the time that takes counts as waiting too.
    """

    def __init__(self, loader: DataLoader, sampler: GlobalOrder | None, seed: int,
                 decode_on: torch.device | None = None) -> None:
        self.loader, self.sampler, self.seed, self.wait_seconds = loader, sampler, seed, 0.0
        self.decode_on = decode_on

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, rollbacks: int = 0, start: int = 0) -> None:
        """Call before each epoch: reshuffles, re-seeds the augmentation (with the run's rollbacks mixed in), skips
        the first ``start`` samples of the epoch's global order, and resets the wait clock."""
        seed = data_seed(self.seed, rollbacks)
        if self.sampler is not None:
            self.sampler.seed = seed
            self.sampler.set_epoch(epoch, start)
        else:
            self.loader.dataset.start = start
        self.loader.dataset.seed = seed  # workers copy the dataset when the epoch's iterator starts
        self.loader.dataset.set_epoch(epoch)
        self.wait_seconds = 0.0

    @property
    def global_batch(self) -> int:
        """Samples one micro-step takes from the epoch's order, all processes together."""
        samples = self.sampler if self.sampler is not None else self.loader.dataset
        return samples.batch_size * samples.world_size

    def __iter__(self):
        start = time.perf_counter()
        iterator = iter(self.loader)  # starting the workers counts as waiting
        while True:
            try:
                batch = next(iterator)
                if self.decode_on is not None:
                    batch = finish_batch(batch, self.decode_on)
            except StopIteration:
                self.wait_seconds += time.perf_counter() - start
                return
            self.wait_seconds += time.perf_counter() - start
            yield batch
            start = time.perf_counter()


def decode_device_of(decode_device: str, device: torch.device) -> torch.device | None:
    """Where ``Batches`` finishes the batches for ``--decode-device`` (None: the workers decode) on a run on ``device``.

    Raises:
        ValueError: an unknown name, or ``cuda`` when the run does not train on a CUDA GPU.
    """
    if decode_device not in DECODE_DEVICES:
        raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {decode_device!r}")
    if decode_device == "cpu":
        return None
    if not torch.cuda.is_available():
        raise ValueError("--decode-device cuda needs a CUDA GPU, and torch finds none (torch.cuda.is_available() is "
                         "False); use --decode-device cpu")
    if device.type != "cuda":
        raise ValueError(f"--decode-device cuda decodes on the training GPU, but this run trains on {device}; "
                         "use --device cuda (or auto) or --decode-device cpu")
    return device


def build_loader(dataset: PretrainSamples | ShardSamples, *, batch_size: int, num_workers: int, rank: int,
                 world_size: int, seed: int, pin_memory: bool, decode_on: torch.device | None = None) -> Batches:
    """This process's batches in the epoch's global order: image folders and photographs through ``GlobalOrder``,
    shards split by their own ``worker_batches``.
    ``decode_on``: the device that finishes each batch (``decode_device_of``), None when the workers decode."""
    if isinstance(dataset, ShardSamples):
        dataset.split(rank=rank, world_size=world_size, batch_size=batch_size)
        sampler = None
    else:
        sampler = GlobalOrder(len(dataset), batch_size=batch_size, rank=rank, world_size=world_size, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        pin_memory=pin_memory, collate_fn=collate_samples, worker_init_fn=ignore_stop_signals)
    return Batches(loader, sampler, seed, decode_on)


def data_seed(seed: int, rollbacks: int) -> int:
    """The seed of the data after ``rollbacks`` rollbacks: the run's own before any, another one after each."""
    return seed if rollbacks == 0 else int(np.random.SeedSequence([seed, rollbacks]).generate_state(1)[0])
