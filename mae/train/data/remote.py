"""Reading shards over the network: byte ranges of ``http(s)://`` URLs (standard library) and of ``s3://``, ``gs://``,
``az://``, ``hf://`` (and any other fsspec protocol) through fsspec.

Access pattern: a remote shard is read by ranges, never downloaded whole and never written to local disk.
``RemoteFile`` is a read-only, seekable file whose reads are served from a read-ahead buffer of ``READ_AHEAD`` bytes
(one range request fills it). At start-up a ``mae-make-shards`` folder costs four requests for the manifest and its
index file, each a size probe then one read (``manifest.read_index``), and one size probe per shard; shards without a
recorded index (named directly, or converted before the index existed) are indexed by reading their tar headers
through it (one request per header, or per ``READ_AHEAD`` bytes where headers lie closer than that: on ImageNet-sized
JPEGs, nearly the whole data set). A worker reading a chunk of consecutive samples makes one request per
``READ_AHEAD`` bytes. ``http(s)`` servers must answer range requests (``206 Partial Content``); a server
that does not is refused by name.

Errors: a transient failure (connection refused or reset, a timeout, HTTP 429 or 5xx, a short read) is retried
``len(RETRY_DELAYS)`` times after waiting ``RETRY_DELAYS`` seconds (0.5, 1, 2, 4, 8: exponential, about 15 s in all),
then raised. A missing object (HTTP 404, or fsspec's FileNotFoundError) is a ``FileNotFoundError`` naming its URL, in
one line, at once.
"""

from __future__ import annotations

import http.client
import io
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from ...runtime.cli import MissingExtraError

__all__ = ["READ_AHEAD", "RETRY_DELAYS", "TIMEOUT", "RemoteFile", "is_url", "open_url", "read_url"]

READ_AHEAD = 1 << 20  # bytes per range request: 8-16 ImageNet JPEGs, or one header where samples are larger
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds before each retry of a transient failure
TIMEOUT = 60.0  # seconds without an answer before a request counts as failed (and is retried)
# What each fsspec protocol needs besides fsspec (the distribution names), for the one-line error when it is missing.
FSSPEC_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                   "abfss": "adlfs", "hf": "huggingface_hub"}
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
T = TypeVar("T")


def is_url(location: object) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(location, str) and _URL.match(location) is not None


def _protocol(url: str) -> str:
    return _URL.match(url).group(1).lower()


class _Transient(Exception):
    """A failure worth retrying."""


def _retrying(fetch: Callable[[], T], url: str) -> T:
    """``fetch()``, retried after ``RETRY_DELAYS`` on transient failures; the last one is an OSError naming ``url``."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            return fetch()
        except _Transient as err:
            if attempt == len(RETRY_DELAYS):
                raise OSError(f"{url}: {err} (gave up after {attempt + 1} attempts over "
                              f"{sum(RETRY_DELAYS):g} s)") from None
            time.sleep(RETRY_DELAYS[attempt])
    raise AssertionError("unreachable")


def _http_range(url: str, start: int, end: int) -> tuple[bytes, int]:
    """Bytes ``[start, end)`` of ``url`` and the object's total size, in one attempt (transient errors as
    ``_Transient``)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{end - 1}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            total = re.search(r"/(\d+)$", answer.headers.get("Content-Range", ""))
            if answer.status != 206 or total is None:
                raise ValueError(f"{url} does not answer HTTP range requests (status {answer.status}, no "
                                 "Content-Range); shards are read by ranges: serve them from a server that supports "
                                 "them (any object store or web server does)")
            data = answer.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise FileNotFoundError(f"{url} does not exist (HTTP 404 Not Found)") from None
        if err.code == 416:  # a range past the end: the object is shorter than asked
            return b"", start
        if err.code == 429 or err.code >= 500:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise OSError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
        raise _Transient(str(getattr(err, "reason", err)) or type(err).__name__) from None
    if len(data) != min(end, int(total.group(1))) - start:
        raise _Transient(f"short read: {len(data)} of {end - start} bytes from byte {start}")
    return data, int(total.group(1))


def _filesystem(url: str):
    """The fsspec filesystem of ``url`` and the path inside it; a one-line ImportError naming what is missing."""
    protocol = _protocol(url)
    needs = ["fsspec"] + ([FSSPEC_PACKAGES[protocol]] if protocol in FSSPEC_PACKAGES else [])
    hint = f"{protocol}:// shards need {' and '.join(needs)}: pip install 'mae-pytorch[remote]'" + (
        f" {needs[1]}" if len(needs) > 1 else "")
    try:
        import fsspec  # the remote extra

        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise MissingExtraError(f"{hint} ({err.name or err} could not be imported)") from None
    except ValueError as err:  # fsspec's "Protocol not known"
        raise ValueError(f"{url}: {err}") from None
    return fs, path


def _fsspec_range(fs, path: str, url: str, start: int, end: int) -> bytes:
    try:
        return fs.cat_file(path, start=start, end=end)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} does not exist") from None
    except (OSError, TimeoutError) as err:  # connection errors of the backends are OSErrors
        raise _Transient(str(err) or type(err).__name__) from None


class RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a remote object, read by ranges through a ``READ_AHEAD`` buffer (module doc)."""

    def __init__(self, url: str, read_ahead: int = READ_AHEAD) -> None:
        super().__init__()
        self.url, self.read_ahead, self.position = url, read_ahead, 0
        if _protocol(url) in ("http", "https"):
            self._fetch = lambda start, end: _http_range(url, start, end)
            _, self.size = _retrying(lambda: self._fetch(0, 1), url)
        else:
            fs, path = _filesystem(url)
            self._fetch = lambda start, end: (_fsspec_range(fs, path, url, start, end), self.size)
            try:
                self.size = _retrying(lambda: fs.size(path), url)
            except FileNotFoundError:
                raise FileNotFoundError(f"{url} does not exist") from None
        self.buffer, self.buffer_start = b"", 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.position + n)
        if end <= self.position:
            return b""
        if not (self.buffer_start <= self.position and end <= self.buffer_start + len(self.buffer)):
            fetch_end = min(self.size, max(end, self.position + self.read_ahead))
            start = self.position
            self.buffer, _ = _retrying(lambda: self._fetch(start, fetch_end), self.url)
            self.buffer_start = start
            if len(self.buffer) < end - start:
                raise OSError(f"{self.url} is shorter than it was when opened ({self.size} bytes): it was changed "
                              "or truncated while being read")
        data = self.buffer[self.position - self.buffer_start:end - self.buffer_start]
        self.position = end
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def open_url(url: str, read_ahead: int = READ_AHEAD) -> RemoteFile:
    """Open a remote object for reading by ranges (``FileNotFoundError`` naming it if it does not exist)."""
    return RemoteFile(url, read_ahead)


def read_url(url: str) -> bytes:
    """The whole of a small remote object (a manifest), with the same retries and errors as shard reads."""
    with open_url(url) as f:
        return f.read()
