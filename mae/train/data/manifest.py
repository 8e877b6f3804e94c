"""The manifest of a ``mae-make-shards`` folder, checked key by key, and the shard index it names.

A folder written by ``mae-make-shards`` holds its shards, ``manifest.json`` and ``index.npy``. The keys the reader
relies on (others, such as ``source`` or ``num_samples``, are informational):

  - ``format``, ``version``: what wrote the manifest;
  - ``shards``: one entry per shard, in order: ``name`` (a plain file name in the folder), ``size`` (bytes),
    ``sha256`` (hex), and with an index ``count`` (images) and ``skipped`` (samples without an image);
  - ``index`` (optional): ``name``, ``size`` (bytes) and ``sha256`` of the index file.

The index file is one ``.npy`` array of shape ``(N, 2)``, int64: row ``j`` is ``(byte offset, bytes)`` of an image's
data in its shard, the shards' rows one after the other in manifest order, each shard's ``count`` rows in file order
(``N`` = the sum of the counts). It is exactly what ``shards.index_shard`` finds by reading the tar headers, recorded
once when the shards are written, so that start-up reads one file of 16 bytes per image (20 MB for ImageNet-1k's
1.28 M images) instead of every header of every shard: over a network, header reads cost a request per header, or read
nearly the whole data set where headers lie closer than the read-ahead. A plain ``.npy`` (no zip, no pickle: it is
loaded with ``allow_pickle=False``) needs nothing but numpy to read, and the manifest's ``sha256`` ties it to these
shards. Manifests written before the index existed have no ``index`` key: their shards are indexed from their
headers, as before.

Checks: every key the reader uses is checked for presence and type, and every file name must be a plain name in the
manifest's folder (no ``/``, no ``..``, no link leading out of the folder). The index is checked before it is used:
its size and SHA-256 against the manifest, its shape and type, its row count against the counts, and per shard
offsets that increase, images that neither overlap nor run past the shard's ``size``, and no negative size. Each fault
is one ValueError naming the manifest or index file, the key or what was wrong, and what was expected.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..._checks import check_regular_file
from .remote import is_url, open_url, read_url

__all__ = ["INDEX_FILE", "MANIFEST_FILE", "MANIFEST_FORMAT", "MANIFEST_VERSION", "ShardIndex", "index_rows",
           "read_index", "read_manifest"]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "mae-pytorch image shards"
MANIFEST_VERSION = 1  # the index is an optional key: older manifests stay readable, so the version is unchanged
INDEX_FILE = "index.npy"
_NO_OVERFLOW = 1 << 62  # offsets and sizes below this sum without overflowing int64
_PROBES = 16  # remote shards whose size is asked for at once at start-up


class ShardIndex(NamedTuple):
    """Where each sample's image lies in one shard, in file order."""

    offsets: np.ndarray  # (n,) int64 byte offset of the image data
    sizes: np.ndarray  # (n,) int64 bytes
    skipped: int  # samples (keys) without an image member


def _manifest_error(manifest: Path | str, key: str, expected: str, got: object) -> ValueError:
    shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
    return ValueError(f"{str(manifest)!r}: key {key!r} must be {expected}, got {shown}; this folder's manifest was not "
                      "written by mae-make-shards or was edited since: convert the images again")


def _manifest_value(manifest: Path | str, entry: dict, key: str, where: str, kind: type, expected: str) -> object:
    if key not in entry:
        raise _manifest_error(manifest, where + key, expected, "nothing (the key is missing)")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _manifest_error(manifest, where + key, expected, value)
    return value


def _shard_path(folder: Path | str, manifest: Path | str, name: object, key: str) -> Path | str:
    """``folder / name`` for a plain file name whose target (links followed) stays inside ``folder`` (a URL folder:
    the name appended)."""
    expected = "a plain file name inside the manifest's folder (no '/', '\\' or '..')"
    if (not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0")
            or Path(name).is_absolute()):
        raise _manifest_error(manifest, key, expected, name)
    if isinstance(folder, str):
        return folder + name
    path = folder / name
    if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
        raise _manifest_error(manifest, key, f"{expected}; it is a link to {str(path.resolve())!r}, outside the folder",
                              name)
    return path


def _file_entry(folder: Path | str, manifest: Path | str, entry: object, where: str) -> tuple[Path | str, int, str]:
    """The checked ``(path, size, sha256)`` of a manifest entry naming a file (a shard, or the index)."""
    if not isinstance(entry, dict):
        raise _manifest_error(manifest, where.rstrip("."), "an object with name, size and sha256", entry)
    path = _shard_path(folder, manifest, _manifest_value(manifest, entry, "name", where, str, "a file name"),
                       where + "name")
    size = _manifest_value(manifest, entry, "size", where, int, "a number of bytes >= 0")
    digest = _manifest_value(manifest, entry, "sha256", where, str, "64 hexadecimal digits")
    if size < 0:
        raise _manifest_error(manifest, where + "size", "a number of bytes >= 0", size)
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _manifest_error(manifest, where + "sha256", "64 lower-case hexadecimal digits", digest)
    return path, size, digest


def _locate(folder: str | Path) -> tuple[Path | str, Path | str]:
    """The folder (a URL ending in ``/``, or a Path) and its manifest's location."""
    if is_url(str(folder)):
        url = str(folder).rstrip("/") + "/"
        return url, url + MANIFEST_FILE
    return Path(folder), Path(folder) / MANIFEST_FILE


def read_manifest(folder: str | Path, *, probe_remote: bool = True) -> tuple[list[Path | str], dict]:
    """The shard paths a ``mae-make-shards`` folder lists, and its manifest, checked (see the module docstring).

    Only what the reader relies on is checked here: ``format``, ``version``, and per shard ``name``, ``size`` (bytes)
    and ``sha256``; the index and the keys it needs are checked by ``read_index``.

    ``folder`` may be a URL (``https://host/shards/``): its ``manifest.json`` is read from there, the shards are named
    by URL and, with ``probe_remote``, their existence and size are checked by one size probe each (``_PROBES`` at
    once). A run of many processes probes on one of them (``build_data``): every process probing every shard would
    send world size x shards requests at once, enough for an object store to throttle.

    Raises:
        ValueError: not our manifest, a key missing or of the wrong type, a name that leaves the folder, a shard whose
            size differs from its entry, or a manifest or shard that is a FIFO, device or socket.
        FileNotFoundError: a listed shard is missing.
    """
    folder, manifest = _locate(folder)
    remote = isinstance(folder, str)
    if not remote:
        check_regular_file(manifest, "manifest")
    try:
        content = json.loads(read_url(manifest) if remote else manifest.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(manifest)!r} is not valid JSON ({err}); convert the images again") from None
    if not isinstance(content, dict) or content.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"--data {str(folder)!r}: {MANIFEST_FILE} there was not written by mae-make-shards "
                         f"(expected a JSON object with \"format\": \"{MANIFEST_FORMAT}\")")
    version = _manifest_value(manifest, content, "version", "", int, f"the number {MANIFEST_VERSION}")
    if version != MANIFEST_VERSION:
        raise _manifest_error(manifest, "version", f"{MANIFEST_VERSION} (a newer mae-pytorch may read it)", version)
    entries = _manifest_value(manifest, content, "shards", "", list, "a non-empty list of shard entries")
    if not entries:
        raise _manifest_error(manifest, "shards", "a non-empty list of shard entries", entries)
    paths: list[Path | str] = []
    sizes: list[int] = []
    seen: set[Path | str] = set()
    for i, entry in enumerate(entries):
        path, size, _ = _file_entry(folder, manifest, entry, f"shards[{i}].")
        if path in seen:
            raise _manifest_error(manifest, f"shards[{i}].name", "a name no other entry has", entry["name"])
        if not remote:
            _check_local_shard(path, size, folder)
        paths.append(path)
        sizes.append(size)
        seen.add(path)
    if remote and probe_remote:
        _check_remote_shards(paths, sizes)
    return paths, content


def _check_local_shard(path: Path, size: int, folder: Path) -> None:
    """A listed local shard exists, is a regular file and has the size its entry says."""
    check_regular_file(path, "shard")
    if not path.is_file():
        raise FileNotFoundError(f"--data {str(folder)!r}: shard {str(path)!r} listed in {MANIFEST_FILE} is missing")
    if path.stat().st_size != size:
        raise ValueError(f"shard {str(path)!r} has {path.stat().st_size} bytes, its manifest says {size}: "
                         "truncated or replaced; convert the folder again")


def _check_remote_shards(urls: list[str], sizes: list[int]) -> None:
    """Every listed remote shard exists and has the size its entry says, so that a missing, truncated or replaced
    shard stops the run at start-up, as a local one does: one size probe per shard, ``_PROBES`` at once.

    Raises:
        FileNotFoundError: a shard does not exist (naming its URL).
        ValueError: a shard's size differs from its entry.
    """
    def size_of(url: str) -> int:
        with open_url(url) as f:
            return f.size

    with ThreadPoolExecutor(max_workers=_PROBES) as pool:
        found = list(pool.map(size_of, urls))
    for url, size, got in zip(urls, sizes, found, strict=True):
        if got != size:
            raise ValueError(f"shard {url!r} has {got} bytes, its manifest says {size}: truncated or replaced; "
                             "convert the folder again")


def index_rows(indexes: list[ShardIndex]) -> np.ndarray:
    """The index file's array for these shards: ``(N, 2)`` int64 rows ``(offset, size)``, shard after shard."""
    rows = [np.stack([i.offsets, i.sizes], axis=1) for i in indexes]
    return np.concatenate([np.zeros((0, 2), np.int64), *rows]).astype("<i8")  # little-endian on every machine


def _index_error(index: Path | str, what: str, expected: str) -> ValueError:
    return ValueError(f"{str(index)!r}: {what}, expected {expected}; this index was not written by mae-make-shards "
                      f"with this folder's {MANIFEST_FILE} or was changed since: convert the folder again")


def _read_index_file(index: Path | str, size: int) -> bytes:
    """The index file's bytes, after checking that it has ``size`` bytes (one read, or one range request)."""
    if isinstance(index, str):
        with open_url(index) as f:
            found = f.size
            data = f.read() if found == size else b""
    else:
        check_regular_file(index, "shard index")
        if not index.is_file():
            raise _index_error(index, "the file is missing", f"the index named in {MANIFEST_FILE}")
        found = index.stat().st_size
        data = index.read_bytes() if found == size else b""
    if found != size:
        raise _index_error(index, f"the file has {found} bytes", f"{size} bytes ({MANIFEST_FILE}'s index.size)")
    return data


def _load_rows(index: Path | str, data: bytes) -> np.ndarray:
    """The ``(N, 2)`` int64 array of an index file's bytes."""
    try:
        rows = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _index_error(index, f"not a .npy array ({err})", "one (N, 2) int64 array") from None
    if (not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.shape[1] != 2 or rows.dtype.kind != "i"
            or rows.dtype.itemsize != 8):  # int64 of either byte order (the header says which)
        raise _index_error(index, f"an array {getattr(rows, 'dtype', '?')} {getattr(rows, 'shape', '?')}",
                           "one (N, 2) int64 array")
    return rows.astype(np.int64)


def _check_rows(index: Path | str, shard: str, offsets: np.ndarray, sizes: np.ndarray, shard_size: int) -> None:
    """One shard's rows describe images that lie, in file order and without overlap, inside its ``shard_size``
    bytes."""
    limit = min(shard_size, _NO_OVERFLOW)
    ends = np.clip(offsets, 0, limit) + np.clip(sizes, 0, limit)  # clipped: no overflow; only read once both fit
    faults = [
        ((sizes < 0).any(), "a negative image size", "sizes >= 0"),
        ((offsets < 0).any() or (offsets > limit).any(), "an offset outside the shard",
         f"offsets within its {shard_size} bytes"),
        ((np.diff(offsets) <= 0).any(), "offsets that do not increase", "offsets in increasing file order"),
        ((ends[:-1] > offsets[1:]).any(), "images that overlap", "each image to end before the next begins"),
        ((ends > limit).any(), "an image that runs past the shard's end", f"images within its {shard_size} bytes"),
    ]
    for fault, what, expected in faults:
        if fault:
            raise _index_error(index, f"{shard} has {what}", expected)


def _counts(manifest: Path | str, entries: list[dict], key: str, expected: str) -> list[int]:
    """Every shard entry's ``key``, a whole number >= 0."""
    values = []
    for i, entry in enumerate(entries):
        value = _manifest_value(manifest, entry, key, f"shards[{i}].", int, expected)
        if value < 0:
            raise _manifest_error(manifest, f"shards[{i}].{key}", expected, value)
        values.append(value)
    return values


def read_index(folder: str | Path, content: dict) -> list[ShardIndex] | None:
    """The recorded index of a folder's shards, checked (module docstring), or None when its manifest has none.

    Args:
        folder: the folder (or URL) ``read_manifest`` read ``content`` from.
        content: that manifest, as ``read_manifest`` returned it (its shard entries already checked).

    Returns:
        One ``ShardIndex`` per shard, in manifest order; None for a manifest without an ``index`` key (the shards are
        then indexed from their tar headers, ``shards.index_shard``).

    Raises:
        ValueError: a bad ``index`` entry, or an index file that does not match the manifest and the shards' sizes;
            the message names the manifest or the index file.
    """
    if "index" not in content:
        return None
    folder, manifest = _locate(folder)
    index, size, digest = _file_entry(folder, manifest, content["index"], "index.")
    entries = content["shards"]
    counts = _counts(manifest, entries, "count", "a number of images >= 0")
    skipped = _counts(manifest, entries, "skipped", "a number of samples >= 0")
    data = _read_index_file(index, size)
    found = hashlib.sha256(data).hexdigest()
    if found != digest:
        raise _index_error(index, f"its SHA-256 is {found}", f"{digest} ({MANIFEST_FILE}'s index.sha256)")
    rows = _load_rows(index, data)
    if len(rows) != sum(counts):
        raise _index_error(index, f"it has {len(rows)} rows", f"{sum(counts)}, the sum of the shards' counts")
    starts = np.cumsum([0, *counts])
    indexes = []
    for s, entry in enumerate(entries):
        offsets, sizes = rows[starts[s]:starts[s + 1], 0], rows[starts[s]:starts[s + 1], 1]
        _check_rows(index, f"shards[{s}] ({entry['name']})", offsets, sizes, entry["size"])
        indexes.append(ShardIndex(offsets, sizes, skipped[s]))
    return indexes
