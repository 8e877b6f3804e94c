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
continues exactly, and one process reproduces a multi-process run. ``start`` skips the first samples of the epoch's
order (a run stopped mid-epoch, resumed on any number of processes: ``mae.train.data.loader``).

Indexing: a ``mae-make-shards`` folder records where every image lies (``index.npy``, checked against its manifest:
``manifest.read_index``), so start-up reads that one file and no shard; shards named directly (``.tar`` files, brace
patterns, ``::`` lists) and folders converted before the index existed are indexed from their tar headers
(``index_shard``), which the recorded index equals.

Bad shards: a file that is not a tar, or is truncated (a member runs past the end of the file, or the end-of-archive
marker is missing), stops the run at start-up with an error naming the shard when its headers are read; in a folder
with an index, a truncated local shard is refused by its size and any other change by its checksum (below). An image
member that cannot be decoded stops the run when it is reached, naming the shard and the member. A FIFO, device or
socket where a shard or the manifest should be is refused by its type before it is opened (opening a FIFO waits for a
writer forever).

Manifests (``read_manifest``, ``read_index``; the ``manifest`` module gives the keys and the index file's layout):
every key the reader uses is checked for presence and type, and every file name must be a plain file name in the
manifest's folder (no ``/``, no ``..``, no link leading out of the folder); each fault is one ValueError naming the
manifest (or the index file), the key and what was expected.

Checksums: each shard of a manifest folder is hashed (SHA-256) and compared with the manifest once per run, during the
run's first epoch, by exactly one reader: of the ``world_size * num_workers`` data-loader workers of all ranks, worker
``k`` of rank ``r`` owns the shards ``s`` with ``s mod (world_size * num_workers) == r * num_workers + k``. It hashes
an owned shard when it first opens it (a sequential read that also warms the page cache for the chunks that follow)
and, at the end of the epoch, the owned shards it never opened. The cost is one extra sequential read of the data set
per run, spread over every worker and overlapped with training; a mismatch stops the first epoch, before its
checkpoint is written, naming the shard. Shards named directly (``.tar`` files, brace patterns) carry no checksum.

Remote shards: ``--data`` may name any of the above by URL (``https://host/shards/`` for a manifest folder,
``https://host/train-{0000..0099}.tar``, ``s3://bucket/a.tar::s3://bucket/b.tar``). They are read by byte ranges
through ``remote.RemoteFile`` (its docstring gives the read-ahead, retries and errors): at start-up the manifest, its
index (two small files) and one size probe per shard (``manifest.read_manifest``: a missing, truncated or replaced
shard stops the run there, naming its URL), or every shard's headers where there is no index (16 shards at once), then
chunks of samples, never the whole data set onto local disk; a changed shard of the same size is found by its
checksum.

Brace patterns are expanded lazily and refused as soon as they name more than ``MAX_SHARD_NAMES`` files, so
``{0..99999999}`` costs a fraction of a second, not gigabytes.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from ..._checks import check_regular_file
from ...io.images import IMAGE_EXTENSIONS, UnreadableImageError
from .augment import MaskingSpec, augment_sample
from .manifest import MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, ShardIndex, read_index, read_manifest
from .remote import is_url, open_url

__all__ = ["CHUNK", "MANIFEST_FILE", "MANIFEST_FORMAT", "MANIFEST_VERSION", "MAX_SHARD_NAMES", "ShardIndex",
           "ShardSamples", "expand_braces", "file_sha256", "index_shard", "is_shard_spec", "open_shard",
           "read_index", "read_manifest", "resolve_shards"]

CHUNK = 16  # samples read in one sequential run (16 ImageNet JPEGs: ~2 MB)
MAX_SHARD_NAMES = 100_000  # 10^5 shards of 1000 images: 75x ImageNet-1k; beyond that a pattern is a typo
_MAX_DIGITS = 18  # a range bound longer than this is no shard number (and int() of 4300+ digits refuses itself)
_BRACE = re.compile(r"\{([^{}]*)\}")


def _names(pattern: str, original: str) -> Iterator[str]:
    """The names a brace pattern stands for, one at a time (left to right), so that nothing forces them all at once."""
    match = _BRACE.search(pattern)
    if match is None:
        yield pattern
        return
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        first, last = numbers.groups()
        if max(len(first), len(last)) > _MAX_DIGITS:
            raise ValueError(f"--data {original!r}: the range {{{body}}} has a bound of more than {_MAX_DIGITS} "
                             "digits; expected shard numbers such as {000000..000099}")
        if int(last) < int(first):
            raise ValueError(f"--data {original!r}: the range {{{body}}} runs backwards")
        width = len(first) if first.startswith("0") else 0
        options: Iterator[str] = (str(i).zfill(width) for i in range(int(first), int(last) + 1))
    else:
        options = iter(body.split(","))
    for option in options:
        yield from _names(head + option + tail, original)


def expand_braces(pattern: str, limit: int = MAX_SHARD_NAMES) -> list[str]:
    """Expand ``{0000..0099}`` (zero padding kept) and ``{a,b,c}``, left to right: ``s-{00..02}.tar`` -> 3 names.

    Raises:
        ValueError: the pattern names more than ``limit`` files (found after expanding ``limit + 1`` of them, never
            more), a range runs backwards, or a range bound is longer than 18 digits.
    """
    return _at_most(_names(pattern, pattern), limit, pattern)


def _at_most(names: Iterator[str], limit: int, data: str) -> list[str]:
    """The first ``limit`` names, or a ValueError if there are more (at most ``limit + 1`` are ever made)."""
    first = list(itertools.islice(names, limit + 1))
    if len(first) > limit:
        raise ValueError(f"--data {data!r} names more than {limit} shards (the limit, MAX_SHARD_NAMES); "
                         "check the brace pattern, or pack the images into fewer, larger shards")
    return first


def is_shard_spec(data: str) -> bool:
    """Whether ``--data`` names tar shards: ``.tar`` files, a brace pattern, ``a.tar::b.tar``, a shard folder, or
    URLs of any of these (a URL names nothing else)."""
    parts = data.split("::")
    return (len(parts) > 1 or any(p.endswith(".tar") or _BRACE.search(p) or is_url(p) for p in parts)
            or _has_manifest(data))


def _has_manifest(data: str) -> bool:
    try:
        return Path(data, MANIFEST_FILE).exists()
    except OSError:  # a name too long for the filesystem (Python < 3.12 raises here): no folder of ours
        return False


def resolve_shards(data: str, *, probe_remote: bool = True) -> tuple[list[Path | str], dict | None]:
    """The shard files ``--data`` names, and the manifest when they come from one ``mae-make-shards`` folder.

    URLs (``remote``) stay strings; a URL that is neither a ``.tar`` nor a brace pattern names a manifest folder.
    Remote shards are found missing when they are indexed, or those of a manifest folder by their size probes
    (``read_manifest``'s ``probe_remote``) (``FileNotFoundError`` naming the URL).

    Raises:
        FileNotFoundError: a named shard does not exist.
        ValueError: a bad manifest (``read_manifest``), more than ``MAX_SHARD_NAMES`` names, or a shard that is a
            FIFO, device or socket.
    """
    if _has_manifest(data) or (is_url(data) and "::" not in data and not data.endswith(".tar")
                               and not _BRACE.search(data)):
        return read_manifest(data, probe_remote=probe_remote)
    names = itertools.chain.from_iterable(_names(part, part) for part in data.split("::") if part)
    paths = [name if is_url(name) else Path(name) for name in _at_most(names, MAX_SHARD_NAMES, data)]
    local = [p for p in paths if isinstance(p, Path)]
    for path in local:
        check_regular_file(path, f"--data {data!r}: shard")
    missing = [str(p) for p in local if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--data {data!r}: {len(missing)} of {len(paths)} shard(s) do not exist "
                                f"(e.g. {missing[0]!r})")
    return paths, None


def file_sha256(f: BinaryIO) -> str:
    """The SHA-256 (hex) of an open binary file, read from its start in 1 MiB blocks."""
    f.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _key(member_name: str) -> str:
    folder, _, base = member_name.rpartition("/")
    return folder + "/" + base.split(".", 1)[0]


def open_shard(location: Path | str) -> BinaryIO:
    """A shard opened for reading: a local file, or a URL read by ranges (``remote``)."""
    return open_url(location) if is_url(location) else open(location, "rb")  # noqa: SIM115 (the caller closes it)


def index_shard(path: Path | str) -> ShardIndex:
    """Read a shard's tar headers (not its data) and locate each sample's image.

    Raises:
        ValueError: not a tar file, truncated, or a FIFO, device or socket; the message names the shard.
        FileNotFoundError: a remote shard does not exist.
    """
    if not is_url(path):
        check_regular_file(path, "shard")
    offsets, sizes, keys_seen, keys_with_image = [], [], set(), set()
    with open_shard(path) as f:
        size = f.seek(0, 2)
        try:
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r:") as tar:
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
            f.seek(end)  # a complete tar ends with two zero blocks; Python's reader does not insist
            if f.read(1024) != bytes(1024):
                raise ValueError(f"no end-of-archive marker after byte {end}")
        except (tarfile.TarError, ValueError) as err:
            raise ValueError(f"shard {str(path)!r} is not a complete tar file ({err}); re-create or remove it") from err
    return ShardIndex(np.asarray(offsets, np.int64), np.asarray(sizes, np.int64), len(keys_seen - keys_with_image))


def _member_at(path: Path | str, offset: int) -> str:
    """The name of the member whose data starts at ``offset`` (for error messages only)."""
    with open_shard(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in iter(tar.next, None):
            if info.offset_data == offset:
                return info.name
    return f"<data at byte {offset}>"


class _OpenShards:
    """The shards one reader keeps open (at most 8, the oldest closed first) and the checksums it still owes."""

    def __init__(self, samples: ShardSamples, verify: Sequence[int] = ()) -> None:
        self.samples, self.files, self.unverified = samples, {}, set(verify)

    def get(self, s: int) -> BinaryIO:
        if s not in self.files:
            if len(self.files) >= 8:
                self.files.pop(next(iter(self.files))).close()
            self.files[s] = open_shard(self.samples.shards[s])  # closed when evicted or by close()
        if s in self.unverified:
            self.samples.verify(s, self.files[s])
            self.unverified.discard(s)
        return self.files[s]

    def verify_the_rest(self) -> None:
        """Hash the owned shards this reader never opened (called when its epoch is complete)."""
        for s in sorted(self.unverified):
            with open_shard(self.samples.shards[s]) as f:
                self.samples.verify(s, f)
        self.unverified.clear()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


class ShardSamples(IterableDataset):
    """Training samples streamed from tar shards: ``(image uint8 (3, S, S), masking noise (L,))`` (see module doc).

    Call ``split(rank, world_size, batch_size)`` before iterating (``build_loader`` does) and ``set_epoch`` before
    each epoch. Indexing happens here, once, in the main process: from ``index`` when given (a folder's recorded
    index, ``read_index``), else by reading every shard's tar headers (``index_shard``).

    Args:
        index: where each shard's images lie, one ``ShardIndex`` per shard (``read_index``), or None to read the
            shards' headers.
        sha256: each shard's expected SHA-256 (hex), or None where unknown; checked once per run during the first
            epoch, each shard by one reader (module docstring).
        encoded: leave JPEGs encoded for the training device (``augment_sample``'s ``encoded``).
    """

    def __init__(self, shards: list[Path | str], *, img_size: int, noise: MaskingSpec, seed: int, repeat: int = 1,
                 sha256: Sequence[str | None] | None = None, index: Sequence[ShardIndex] | None = None,
                 encoded: bool = False) -> None:
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat!r}")
        if not shards:
            raise ValueError("no shard given")
        self.shards = list(shards)
        self.sha256 = [None] * len(self.shards) if sha256 is None else list(sha256)
        if len(self.sha256) != len(self.shards):
            raise ValueError(f"sha256 must give one checksum (or None) per shard: {len(self.shards)}, got "
                             f"{len(self.sha256)}")
        self.index = self._index_of(index)
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
        self.start = 0  # samples of the epoch's order already used (a resumed epoch)
        self.first_epoch: int | None = None  # the run's first epoch, when the checksums are verified

    def _index_of(self, index: Sequence[ShardIndex] | None) -> list[ShardIndex]:
        """The given index (one entry per shard), or the shards' headers read, 16 shards at a time."""
        if index is not None:
            if len(index) != len(self.shards):
                raise ValueError(f"index must locate the images of each shard: {len(self.shards)} shard(s), got "
                                 f"{len(index)} entries")
            return list(index)
        with ThreadPoolExecutor(max_workers=16) as pool:  # remote shards: their headers are read concurrently
            return list(pool.map(index_shard, self.shards))

    @property
    def num_images(self) -> int:
        return int(self.starts[-1])

    def split(self, *, rank: int, world_size: int, batch_size: int) -> None:
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.first_epoch is None:
            self.first_epoch = epoch

    def verified_by(self, worker: int, num_workers: int) -> list[int]:
        """The shards (with a known checksum) that data-loader worker ``worker`` of this rank verifies."""
        slot, slots = self.rank * num_workers + worker, self.world_size * num_workers
        return [s for s in range(slot, len(self.shards), slots) if self.sha256[s] is not None]

    def verify(self, s: int, f: BinaryIO) -> None:
        """Compare shard ``s`` (open as ``f``) with its expected SHA-256; a mismatch is a ValueError naming it."""
        digest = file_sha256(f)
        if digest != self.sha256[s]:
            raise ValueError(f"shard {str(self.shards[s])!r} is corrupt or was changed since mae-make-shards wrote it: "
                             f"its SHA-256 is {digest}, {MANIFEST_FILE} says {self.sha256[s]}; restore the shard or "
                             "convert the images again")

    def __len__(self) -> int:
        """Samples this rank yields per epoch (whole batches only)."""
        return (self.num_images * self.repeat - self.start) // (self.world_size * self.batch_size) * self.batch_size

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
        order, b, g = self.epoch_order()[self.start:], self.batch_size, self.batch_size * self.world_size
        return [order[q * g + self.rank * b:q * g + (self.rank + 1) * b]
                for q in range(worker, len(self) // b, num_workers)]

    def source(self, index: int, files: _OpenShards | None = None) -> tuple[bytes, int, int]:
        """The encoded image of sample ``index`` (global, any pass), its shard number and its byte offset there.

        ``files`` keeps a few shards open across calls (a worker's reads within a chunk are then sequential) and
        verifies the checksums its reader owns as it opens them.
        """
        index %= self.num_images
        s = int(np.searchsorted(self.starts, index, side="right") - 1)
        offset, size = (int(a[index - self.starts[s]]) for a in (self.index[s].offsets, self.index[s].sizes))
        own = files is None
        files = _OpenShards(self) if own else files
        try:
            f = files.get(s)
            f.seek(offset)
            return f.read(size), s, offset
        finally:
            if own:
                files.close()

    def sample(self, index: int, files: _OpenShards | None = None) -> tuple[Tensor, Tensor]:
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
        first = self.first_epoch is None or self.epoch == self.first_epoch  # None: set_epoch never called
        files = _OpenShards(self, self.verified_by(worker, num_workers) if first else ())
        try:
            for batch in self.worker_batches(worker, num_workers):
                for index in batch.tolist():
                    yield self.sample(index, files)
            files.verify_the_rest()
        finally:
            files.close()

    def figure_images(self, n: int) -> list[tuple[bytes, str]]:
        """The first ``n`` images as ``(bytes, name)``, for the reconstruction figure (their shard opened once)."""
        files = _OpenShards(self)
        try:
            first = [self.source(i, files) for i in range(min(n, self.num_images))]
        finally:
            files.close()
        return [(data, f"{self.shards[s]}@{offset}") for data, s, offset in first]
