"""Images in WebDataset-style tar shards: finding the shards, indexing them, and streaming them to training processes.

A shard is a plain (uncompressed) tar file; members that share a key (the name up to the first dot of its last path
component: ``00000042.jpg``, ``00000042.cls``) form one sample, whose image is its first member with an image
extension. Other members (labels, metadata) are ignored; a sample without an image is skipped and counted.

How an epoch is read (``ShardSamples``), exact and without overlap:
  - each shard is cut into chunks of ``CHUNK`` consecutive samples; the chunks are shuffled per epoch from
    ``(seed, epoch)``, and the epoch is their concatenation (``repeat`` times over). Reads stay sequential within a
    chunk and batches mix chunks from all over the data set;
  - global batch ``q`` is positions ``[q*G, (q+1)*G)`` with ``G = world_size * batch_size``; rank ``r`` takes the
    r-th ``batch_size`` slice of it, and data-loader worker ``k`` of ``W`` yields the rank's batches ``j = k mod W``.
    The DataLoader collects workers round-robin, so a rank sees the same batches in the same order whatever ``W``;
    the last ``len % G`` samples of the shuffled epoch are left out (other ones each epoch);
  - each sample's crop, flip and masking noise come from ``(seed, epoch, index)``, ``index`` being its place in the
    shards (plus ``pass * len`` when repeated), as for image folders.
So the epoch's batches are a pure function of ``(seed, epoch, world_size * batch_size)``: resuming at an epoch boundary
(where checkpoints are written) continues exactly, and one process reproduces a multi-process run.

Bad shards: a file that is not a tar, or is truncated (a member runs past the end of the file, or the end-of-archive
marker is missing), stops the run at start-up with an error naming the shard. An image member that cannot be decoded
stops the run when it is reached, naming the shard and the member.
"""

from __future__ import annotations

import json
import re
import tarfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from .augment import MaskingSpec, augment_sample
from .datasets import IMAGE_EXTENSIONS
from .decode import UnreadableImageError

__all__ = ["CHUNK", "MANIFEST_FILE", "MANIFEST_FORMAT", "ShardIndex", "ShardSamples", "expand_braces", "index_shard",
           "is_shard_spec", "resolve_shards"]

CHUNK = 16  # samples read in one sequential run (16 ImageNet JPEGs: ~2 MB)
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "mae-pytorch image shards"
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{0000..0099}`` (zero padding kept) and ``{a,b,c}``, left to right: ``s-{00..02}.tar`` -> 3 names."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        first, last = numbers.groups()
        if int(last) < int(first):
            raise ValueError(f"--data {pattern!r}: the range {{{body}}} runs backwards")
        width = len(first) if first.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [name for option in options for name in expand_braces(head + option + tail)]


def is_shard_spec(data: str) -> bool:
    """Whether ``--data`` names tar shards: ``.tar`` files, a brace pattern, ``a.tar::b.tar``, or a shard folder."""
    parts = data.split("::")
    return (len(parts) > 1 or any(p.endswith(".tar") or _BRACE.search(p) for p in parts)
            or (Path(data) / MANIFEST_FILE).is_file())


def resolve_shards(data: str) -> tuple[list[Path], dict | None]:
    """The shard files ``--data`` names, and the manifest when they come from one ``mae-make-shards`` folder.

    Raises:
        FileNotFoundError: a named shard does not exist.
        ValueError: a shard's size differs from its manifest entry, or the manifest is not ours.
    """
    if (Path(data) / MANIFEST_FILE).is_file():
        folder = Path(data)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"--data {data!r}: {MANIFEST_FILE} there was not written by mae-make-shards")
        paths = [folder / entry["name"] for entry in manifest["shards"]]
        for path, entry in zip(paths, manifest["shards"], strict=True):
            if not path.is_file():
                raise FileNotFoundError(f"--data {data!r}: shard {str(path)!r} listed in {MANIFEST_FILE} is missing")
            if path.stat().st_size != entry["size"]:
                raise ValueError(f"shard {str(path)!r} has {path.stat().st_size} bytes, its manifest says "
                                 f"{entry['size']}: truncated or replaced; convert the folder again")
        return paths, manifest
    paths = [Path(name) for part in data.split("::") if part for name in expand_braces(part)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--data {data!r}: {len(missing)} of {len(paths)} shard(s) do not exist "
                                f"(e.g. {missing[0]!r})")
    return paths, None


class ShardIndex(NamedTuple):
    """Where each sample's image lies in one shard, in file order."""

    offsets: np.ndarray  # (n,) int64 byte offset of the image data
    sizes: np.ndarray  # (n,) int64 bytes
    skipped: int  # samples (keys) without an image member


def _key(member_name: str) -> str:
    folder, _, base = member_name.rpartition("/")
    return folder + "/" + base.split(".", 1)[0]


def index_shard(path: Path) -> ShardIndex:
    """Read a shard's tar headers (not its data) and locate each sample's image.

    Raises:
        ValueError: not a tar file, or truncated; the message names the shard.
    """
    size = path.stat().st_size
    offsets, sizes, keys_seen, keys_with_image = [], [], set(), set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in iter(tar.next, None):
                if info.offset_data + info.size > size:
                    raise ValueError(f"member {info.name!r} runs past the end of the file ({size} bytes)")
                key = _key(info.name)
                if not info.isfile():
                    continue
                keys_seen.add(key)
                if key not in keys_with_image and info.name.lower().endswith(IMAGE_EXTENSIONS):
                    keys_with_image.add(key)
                    offsets.append(info.offset_data)
                    sizes.append(info.size)
            end = tar.offset
        with open(path, "rb") as f:  # a complete tar ends with two zero blocks; Python's reader does not insist
            f.seek(end)
            if f.read(1024) != bytes(1024):
                raise ValueError(f"no end-of-archive marker after byte {end}")
    except (tarfile.TarError, ValueError, OSError) as err:
        raise ValueError(f"shard {str(path)!r} is not a complete tar file ({err}); re-create or remove it") from err
    return ShardIndex(np.asarray(offsets, np.int64), np.asarray(sizes, np.int64), len(keys_seen - keys_with_image))


def _member_at(path: Path, offset: int) -> str:
    """The name of the member whose data starts at ``offset`` (for error messages only)."""
    with tarfile.open(path, mode="r:") as tar:
        for info in iter(tar.next, None):
            if info.offset_data == offset:
                return info.name
    return f"<data at byte {offset}>"


class ShardSamples(IterableDataset):
    """Training samples streamed from tar shards: ``(image uint8 (3, S, S), masking noise (L,))`` (see module doc).

    Call ``split(rank, world_size, batch_size)`` before iterating (``build_loader`` does) and ``set_epoch`` before
    each epoch. Indexing happens here, once, in the main process: every shard's headers are read.
    """

    def __init__(self, shards: list[Path], *, img_size: int, noise: MaskingSpec, seed: int, repeat: int = 1,
                 encoded: bool = False) -> None:
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat!r}")
        if not shards:
            raise ValueError("no shard given")
        self.shards = list(shards)
        self.index = [index_shard(p) for p in self.shards]
        self.skipped = sum(i.skipped for i in self.index)
        if self.skipped:
            warnings.warn(f"{self.skipped} sample(s) in the shards have no image member and were skipped", stacklevel=2)
        counts = np.array([len(i.offsets) for i in self.index], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # (shards + 1,) global index of each shard's first
        if self.starts[-1] == 0:
            raise ValueError(f"the {len(self.shards)} shard(s) hold no image")
        # chunks: (global index of the first sample, length), shard by shard
        self.chunks = np.array([(self.starts[s] + i, min(CHUNK, c - i)) for s, c in enumerate(counts)
                                for i in range(0, c, CHUNK)], np.int64).reshape(-1, 2)
        self.img_size, self.noise, self.seed, self.repeat = img_size, noise, seed, repeat
        self.encoded = encoded  # JPEGs left for the training device (augment_sample's encoded)
        self.epoch, self.rank, self.world_size, self.batch_size = 0, 0, 1, 1

    @property
    def num_images(self) -> int:
        return int(self.starts[-1])

    def split(self, *, rank: int, world_size: int, batch_size: int) -> None:
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch (whole batches only)."""
        return self.num_images * self.repeat // (self.world_size * self.batch_size) * self.batch_size

    def epoch_order(self) -> np.ndarray:
        """The epoch's sample indices (global index + pass * num_images) in reading order, all ranks together."""
        rng = np.random.default_rng([self.seed, self.epoch])
        passes = np.repeat(np.arange(self.repeat), len(self.chunks))
        chunks = np.tile(self.chunks, (self.repeat, 1))
        order = rng.permutation(len(chunks))
        return np.concatenate([np.arange(start, start + n) + p * self.num_images
                               for (start, n), p in zip(chunks[order], passes[order], strict=True)])

    def worker_batches(self, worker: int, num_workers: int) -> list[np.ndarray]:
        """The batches (sample indices) that data-loader worker ``worker`` of this rank yields, in order."""
        order, b, g = self.epoch_order(), self.batch_size, self.batch_size * self.world_size
        return [order[q * g + self.rank * b:q * g + (self.rank + 1) * b]
                for q in range(worker, len(self) // b, num_workers)]

    def source(self, index: int, files: dict | None = None) -> tuple[bytes, int, int]:
        """The encoded image of sample ``index`` (global, any pass), its shard number and its byte offset there.

        ``files`` keeps a few shards open across calls (a worker's reads within a chunk are then sequential).
        """
        index %= self.num_images
        s = int(np.searchsorted(self.starts, index, side="right") - 1)
        offset, size = (int(a[index - self.starts[s]]) for a in (self.index[s].offsets, self.index[s].sizes))
        files = {} if files is None else files
        if s not in files:
            if len(files) >= 8:
                files.pop(next(iter(files))).close()
            files[s] = open(self.shards[s], "rb")  # closed when evicted or when the epoch ends
        f = files[s]
        f.seek(offset)
        return f.read(size), s, offset

    def sample(self, index: int, files: dict | None = None) -> tuple[Tensor, Tensor]:
        """Sample ``index``: ``(image uint8 (3, S, S), masking noise (L,))``."""
        data, s, offset = self.source(index, files)
        try:
            return augment_sample(data, f"{self.shards[s]}@{offset}", size=self.img_size,
                                  noise=self.noise, seed=self.seed, epoch=self.epoch, index=index,
                                  encoded=self.encoded)
        except UnreadableImageError as err:
            member = _member_at(self.shards[s], offset)
            raise UnreadableImageError(
                f"shard {str(self.shards[s])!r} member {member!r} cannot be decoded ({err.__cause__ or err}); remove "
                "it from the shard (or convert the images again) and resume from the last checkpoint"
            ) from err

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        files: dict = {}
        try:
            for batch in self.worker_batches(worker, num_workers):
                for index in batch.tolist():
                    yield self.sample(index, files)
        finally:
            for f in files.values():
                f.close()

    def figure_images(self, n: int) -> list[tuple[bytes, str]]:
        """The first ``n`` images as ``(bytes, name)``, for the reconstruction figure."""
        first = map(self.source, range(min(n, self.num_images)))
        return [(data, f"{self.shards[s]}@{offset}") for data, s, offset in first]
