"""Shards over the network: a local HTTP server (standard library, 127.0.0.1, a port of its own) serves shards made by
mae-make-shards, answering range requests; one path fails transiently, missing ones answer 404. Also fsspec's
in-memory filesystem for the fsspec path, and the one-line errors."""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mae.train.data import remote
from mae.train.data.augment import MaskingSpec
from mae.train.data.make_shards import main as make_shards
from mae.train.data.shards import ShardSamples, is_shard_spec, read_index, resolve_shards
from mae.train.report import read_metrics

TINY = ["--model-override", "embed_dim=64", "--model-override", "depth=2", "--model-override", "num_heads=4",
        "--model-override", "decoder_embed_dim=32", "--model-override", "decoder_depth=1",
        "--model-override", "decoder_num_heads=4"]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Files under ``root`` with HTTP range requests; ``/flaky/...`` answers 503 to its first request of each path.
    ``requests`` lists the paths asked for, ``served`` the bytes of data each answer carried."""

    root: Path
    failed: set
    requests: list
    served: list

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        path = self.path
        if path.startswith("/flaky/"):
            if path not in self.failed:
                self.failed.add(path)
                self.send_error(503, "busy")
                return
            path = path[len("/flaky"):]
        file = self.root / path.lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if match is None:
            self.send_error(400, "this test server only answers range requests")
            return
        start, end = int(match.group(1)), min(int(match.group(2)), len(data) - 1)
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start:end + 1])
        self.served.append(end + 1 - start)


@contextlib.contextmanager
def serve(root: Path):
    """An HTTP server on 127.0.0.1 (port 0: a free one) in a thread, stopped when the block ends."""
    handler = type("Handler", (_Handler,), {"root": root, "failed": set(), "requests": [], "served": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(remote, "RETRY_DELAYS", (0.01, 0.02, 0.04))
    monkeypatch.setattr(remote, "TIMEOUT", 10.0)


@pytest.fixture
def shards(tmp_path) -> Path:
    """12 random JPEGs in 3 shards (5, 5, 2) under tmp_path/data/shards, with manifest.json."""
    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "src" / f"{i}.jpg")
    out = tmp_path / "data" / "shards"
    assert make_shards([str(tmp_path / "src"), str(out), "--shard-size", "5"]) == 0
    return out


def samples(shards, **kw) -> ShardSamples:
    return ShardSamples(shards, img_size=32, noise=MaskingSpec(16), seed=0, **kw)


def test_remote_shards_read_the_same_samples_as_local_ones(shards, fast_retries):
    """A manifest folder URL, a brace pattern and a '::' list give the local shards' samples, checksums verified."""
    local = samples(resolve_shards(str(shards))[0])
    with serve(shards.parent) as (base, handler):
        folder = f"{base}/shards/"
        assert is_shard_spec(folder) and is_shard_spec(f"{base}/shards")
        paths, manifest = resolve_shards(folder)
        assert paths == [f"{base}/shards/shard-00000{i}.tar" for i in range(3)] and manifest["num_samples"] == 12
        assert resolve_shards(f"{base}/shards/shard-{{000000..000002}}.tar")[0] == paths
        assert resolve_shards("::".join(paths[:2]))[0] == paths[:2]
        over_http = samples(paths, sha256=[e["sha256"] for e in manifest["shards"]])
        assert over_http.num_images == 12
        over_http.split(rank=0, world_size=1, batch_size=4)
        over_http.set_epoch(0)
        got = list(over_http)  # verifies every checksum on the way
        local.split(rank=0, world_size=1, batch_size=4)
        local.set_epoch(0)
        for (a, na), (b, nb) in zip(got, list(local), strict=True):
            assert (a == b).all() and (na == nb).all()
        # headers and samples were read by ranges: nothing asked for a whole shard in one request
        assert len(handler.requests) > 3


@pytest.fixture
def big_shards(tmp_path) -> Path:
    """24 JPEGs of noise, about 190 KB each, in 3 shards of 8 (1.5 MB) under tmp_path/data/big: their headers lie
    closer than the 1 MiB read-ahead, as on ImageNet (about 110 KB per JPEG)."""
    rng = np.random.default_rng(1)
    (tmp_path / "src").mkdir()
    for i in range(24):
        noise = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / "src" / f"{i}.jpg", quality=95)
    out = tmp_path / "data" / "big"
    assert make_shards([str(tmp_path / "src"), str(out), "--shard-size", "8"]) == 0
    return out


def test_a_remote_folder_starts_with_its_index_not_its_headers(big_shards, fast_retries):
    """Start-up on a remote folder read nearly every byte of it (one range per MiB, for the headers); with the
    recorded index it reads the manifest and the index (4 small requests) and probes each shard's size."""
    with serve(big_shards.parent) as (base, handler):
        folder = f"{base}/big/"
        paths, manifest = resolve_shards(folder)
        by_index = samples(paths, index=read_index(folder, manifest))
        index_requests, index_bytes = list(handler.requests), sum(handler.served)
        handler.requests.clear()
        handler.served.clear()
        by_headers = samples(paths)  # what start-up did before the index (and does for shards named directly)
        header_requests, header_bytes = list(handler.requests), sum(handler.served)
    data_bytes = sum(entry["size"] for entry in manifest["shards"])
    measured = (f"index: {len(index_requests)} requests, {index_bytes} bytes; headers: {len(header_requests)} "
                f"requests, {header_bytes} bytes; data set: {data_bytes} bytes")
    assert data_bytes > 2 * remote.READ_AHEAD, measured  # bigger than the read-ahead: the comparison means something
    probes = [f"/big/{entry['name']}" for entry in manifest["shards"]]  # one each, concurrently: any order
    assert index_requests[:2] == ["/big/manifest.json"] * 2, measured  # its size, then its content
    assert sorted(index_requests[2:-2]) == probes and index_requests[-2:] == ["/big/index.npy"] * 2, measured
    assert index_bytes < 4096 and header_bytes > data_bytes / 2, measured
    assert [(i.offsets.tolist(), i.sizes.tolist()) for i in by_index.index] == [
        (i.offsets.tolist(), i.sizes.tolist()) for i in by_headers.index]


def test_a_missing_or_truncated_remote_shard_stops_the_start_up_naming_its_url(shards, fast_retries):
    """A remote folder's shards are probed at start-up, as local ones are looked at: a missing one or one whose size
    is not its manifest's stops before any training, naming its URL (not when a loader worker first reads it)."""
    missing, truncated = shards / "shard-000001.tar", shards / "shard-000002.tar"
    with serve(shards.parent) as (base, handler):
        missing.rename(shards / "elsewhere.tar")
        with pytest.raises(FileNotFoundError, match=re.escape(f"{base}/shards/shard-000001.tar") + " does not exist"):
            resolve_shards(f"{base}/shards/")
        handler.requests.clear()
        resolve_shards(f"{base}/shards/", probe_remote=False)  # the other processes of a run: the manifest only
        assert handler.requests == ["/shards/manifest.json"] * 2
        (shards / "elsewhere.tar").rename(missing)
        truncated.write_bytes(truncated.read_bytes()[:-1024])
        with pytest.raises(ValueError, match=re.escape(f"shard '{base}/shards/shard-000002.tar' has ") + r"\d+ bytes, "
                           r"its manifest says \d+: truncated or replaced"):
            resolve_shards(f"{base}/shards/")


def test_a_transient_failure_is_retried_and_a_404_names_its_url(shards, fast_retries, capsys):
    with serve(shards.parent) as (base, handler):
        flaky = f"{base}/flaky/shards/shard-000000.tar"
        index = samples([flaky]).index[0]  # first request 503, then OK
        assert len(index.offsets) == 5 and handler.requests.count("/flaky/shards/shard-000000.tar") >= 2
        missing = f"{base}/shards/shard-000009.tar"
        with pytest.raises(FileNotFoundError, match=re.escape(missing) + r" does not exist \(HTTP 404"):
            samples([missing])
        from mae.train.cli import main

        assert main(["--data", f"{base}/nowhere/", "--output-dir", str(shards.parent / "runs")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{base}/nowhere/manifest.json does not exist (HTTP 404" in err


def test_a_server_that_keeps_failing_is_given_up_on_with_its_url(monkeypatch, shards, fast_retries):
    with serve(shards.parent) as (base, handler):
        handler.failed = _NeverFailed()
        url = f"{base}/flaky/shards/shard-000000.tar"
        with pytest.raises(OSError, match=re.escape(url) + r": HTTP 503 .*gave up after 4 attempts"):
            remote.open_url(url)


class _NeverFailed(set):
    def __contains__(self, item) -> bool:
        return False


def test_a_corrupt_remote_shard_names_its_url(shards, fast_retries, tmp_path):
    broken = shards.parent / "broken.tar"
    broken.write_bytes((shards / "shard-000000.tar").read_bytes()[:3000])
    with serve(shards.parent) as (base, _):
        with pytest.raises(ValueError, match=re.escape(f"shard '{base}/broken.tar' is not a complete tar file")):
            samples([f"{base}/broken.tar"])


def test_fsspec_urls_stream_and_missing_packages_are_named(shards, monkeypatch):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for file in shards.iterdir():
        fs.pipe_file(f"/mae-test/{file.name}", file.read_bytes())
    try:
        paths, manifest = resolve_shards("memory://mae-test/")
        assert paths[0] == "memory://mae-test/shard-000000.tar"
        assert samples(paths, sha256=[e["sha256"] for e in manifest["shards"]]).num_images == 12
        with pytest.raises(FileNotFoundError, match="memory://mae-test/none.tar does not exist"):
            remote.open_url("memory://mae-test/none.tar")
    finally:
        fs.rm("/mae-test", recursive=True)
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if the remote extra were not installed
    expected = r"s3:// shards need fsspec and s3fs: pip install 'mae-pytorch\[remote\]' s3fs"
    with pytest.raises(ImportError, match=expected):
        remote.open_url("s3://bucket/shard.tar")


@pytest.mark.slow
def test_pretrain_over_http_end_to_end(shards, fast_retries, tmp_path):
    """mae-pretrain --data http://127.0.0.1:PORT/shards/ trains (the tiny config of test_train_run)."""
    from mae.train.cli import main

    with serve(shards.parent) as (base, _):
        args = ["--data", f"{base}/flaky/shards/", "--img-size", "32", "--patch-size", "8", "--batch-size", "4",
                "--num-workers", "1", "--no-progress", "--no-figures", "--epochs", "2", "--keep-every", "0",
                "--warmup-epochs", "0", "--output-dir", str(tmp_path / "runs"), "--name", "http", *TINY]
        assert main(args) == 0
    run = tmp_path / "runs" / "http"
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(math.isfinite(r["loss"]) for r in epochs)
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["data"]["source"] == f"{base}/flaky/shards/" and resolved["data"]["num_images"] == 12
