"""Tar shards: the converter's output and manifest, streaming without overlap across 2 ranks x 2 workers, the same
batches whatever the number of workers, and clear errors for bad shards."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mae.io.images import scan_image_folder
from mae.train.data import shards as shards_module
from mae.train.data.augment import MaskingSpec
from mae.train.data.datasets import ImageFiles, PretrainSamples
from mae.train.data.make_shards import main as make_shards
from mae.train.data.shards import ShardSamples, expand_braces, index_shard, is_shard_spec, read_index, resolve_shards


def solid_images(folder, n):
    """n solid-colour PNGs: any crop and resize of image i keeps its colour, so a sample tells which image it is."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20 + i % 3, 16), (i, 255 - i, 7)).save(folder / f"c{i % 2}_{i:03d}.png")
    return folder


def add_numbered(tar: tarfile.TarFile, files) -> None:
    """Add the images as members 0000.png, 0001.png, ...: sample i of the shard is file i."""
    for i, path in enumerate(files):
        tar.add(path, arcname=f"{i:04d}.png")


def identity(img: torch.Tensor) -> int:
    return int(img[0, 0, 0])  # the red channel = the image number


def test_expand_braces_and_shard_specs():
    assert expand_braces("s-{08..11}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert is_shard_spec("x.tar") and is_shard_spec("a.tar::b.tar") and not is_shard_spec("/some/folder")
    with pytest.raises(ValueError, match="runs backwards"):
        expand_braces("s-{3..1}.tar")


def test_make_shards_round_trip(tmp_path):
    src = solid_images(tmp_path / "src", 23)
    assert make_shards([str(src), str(tmp_path / "out"), "--shard-size", "10"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 3] and manifest["num_samples"] == 23
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "index.npy", "manifest.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]  # no temp file
    shards, found = resolve_shards(str(tmp_path / "out"))
    assert found == manifest and len(shards) == 3
    same, _ = resolve_shards(str(tmp_path / "out" / "shard-{000000..000002}.tar"))
    assert same == shards
    data = ShardSamples(shards, img_size=8, noise=MaskingSpec(4), seed=0)
    members = sorted(data.source(i)[0] for i in range(23))
    assert members == sorted(p.read_bytes() for p in src.iterdir())  # every file, byte for byte, once
    # an existing, non-empty output folder is refused, never overwritten
    assert make_shards([str(src), str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("repeat", [1, 2])
def test_no_sample_twice_across_two_ranks_and_two_workers(tmp_path, repeat):
    src = solid_images(tmp_path / "src", 37)
    make_shards([str(src), str(tmp_path / "out"), "--shard-size", "8"])
    shards, _ = resolve_shards(str(tmp_path / "out"))
    seen, per_rank = [], []
    for rank in range(2):
        data = ShardSamples(shards, img_size=8, noise=MaskingSpec(4), seed=1, repeat=repeat)
        data.split(rank=rank, world_size=2, batch_size=3)
        data.set_epoch(2)
        batches = list(torch.utils.data.DataLoader(data, batch_size=3, num_workers=2, drop_last=True))
        per_rank.append(len(batches))
        seen += [identity(img) for imgs, _ in batches for img in imgs]
    assert per_rank == [37 * repeat // 6] * 2  # the same number of steps on each rank: DDP never waits forever
    counts = np.bincount(seen, minlength=37)
    assert len(seen) == 37 * repeat // 6 * 6 and counts.max() <= repeat  # nobody twice (per pass)


def test_batches_do_not_depend_on_workers_and_one_process_equals_two(tmp_path):
    src = solid_images(tmp_path / "src", 30)
    make_shards([str(src), str(tmp_path / "out"), "--shard-size", "7"])
    shards, _ = resolve_shards(str(tmp_path / "out"))

    def run(world, rank, batch, workers):
        data = ShardSamples(shards, img_size=8, noise=MaskingSpec(4), seed=0)
        data.split(rank=rank, world_size=world, batch_size=batch)
        data.set_epoch(1)
        loader = torch.utils.data.DataLoader(data, batch_size=batch, num_workers=workers, drop_last=True)
        return [(imgs, noise) for imgs, noise in loader]

    one = run(1, 0, 4, 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, run(1, 0, 4, 2), strict=True))
    ranks = [run(2, r, 2, 2) for r in range(2)]  # each global step: rank 0's 2 samples then rank 1's
    for step, (imgs, noise) in enumerate(one):
        assert torch.equal(imgs, torch.cat([ranks[0][step][0], ranks[1][step][0]]))
        assert torch.equal(noise, torch.cat([ranks[0][step][1], ranks[1][step][1]]))


def test_a_sample_is_the_same_from_a_folder_or_from_shards(tmp_path):
    """Augmentation is a function of (seed, epoch, index): index = place in the (unshuffled) folder or shards."""
    src = solid_images(tmp_path / "src", 5)
    files = sorted(src.iterdir())
    with tarfile.open(tmp_path / "one.tar", "w") as tar:
        add_numbered(tar, files)
    data = ShardSamples([tmp_path / "one.tar"], img_size=8, noise=MaskingSpec(4), seed=3)
    folder = PretrainSamples(ImageFiles(files), img_size=8, noise=MaskingSpec(4), seed=3)
    for i in range(5):
        a, b = data.sample(i), folder[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_shards_are_named(tmp_path):
    src = solid_images(tmp_path / "src", 4)
    files = sorted(src.iterdir())
    with tarfile.open(tmp_path / "good.tar", "w") as tar:
        add_numbered(tar, files)
        info = tarfile.TarInfo("0009.txt")  # a sample without an image: skipped and counted
        info.size = 2
        tar.addfile(info, fileobj=io.BytesIO(b"hi"))
    full = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match=r"cut\.tar.*not a complete tar"):
        ShardSamples([tmp_path / "cut.tar"], img_size=8, noise=MaskingSpec(4), seed=0)
    with tarfile.open(tmp_path / "good.tar") as tar:
        first = tar.next()
        boundary = first.offset_data + -(-first.size // 512) * 512  # where the second member's header starts
    (tmp_path / "cut_at_member.tar").write_bytes(full[:boundary])  # ends right after a member: no end marker
    with pytest.raises(ValueError, match=r"cut_at_member\.tar.*end-of-archive"):
        ShardSamples([tmp_path / "cut_at_member.tar"], img_size=8, noise=MaskingSpec(4), seed=0)
    with pytest.warns(UserWarning, match="1 sample"):
        data = ShardSamples([tmp_path / "good.tar"], img_size=8, noise=MaskingSpec(4), seed=0)
    assert data.num_images == 4 and data.skipped == 1

    with tarfile.open(tmp_path / "liar.tar", "w") as tar:
        tar.add(files[0], arcname="0000.png")
        info = tarfile.TarInfo("0001.jpg")  # says image, holds text
        info.size = 5
        tar.addfile(info, fileobj=io.BytesIO(b"hello"))
    data = ShardSamples([tmp_path / "liar.tar"], img_size=8, noise=MaskingSpec(4), seed=0)
    with pytest.raises(ValueError, match=r"liar\.tar' member '0001\.jpg' cannot be decoded"):
        data.sample(1)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        resolve_shards(str(tmp_path / "missing-{0..1}.tar"))


@pytest.mark.slow
def test_pretrain_on_shards_end_to_end_reports_data_wait(tmp_path):
    from mae.train import TrainConfig, pretrain
    from mae.train.report import read_metrics

    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "src" / f"{i}.jpg")
    assert make_shards([str(tmp_path / "src"), str(tmp_path / "shards"), "--shard-size", "5"]) == 0
    tiny = {"embed_dim": 64, "depth": 2, "num_heads": 4, "decoder_embed_dim": 32, "decoder_depth": 1,
            "decoder_num_heads": 4}
    config = TrainConfig(data=str(tmp_path / "shards"), img_size=32, patch_size=8, model_overrides=tiny, batch_size=4,
                         num_workers=0, epochs=2, warmup_epochs=0.5, blr=1e-2, progress=False, keep_every=0,
                         figures=False, output_dir=str(tmp_path / "runs"), name="shards")
    result = pretrain(config)
    assert result.global_step == 6 and math.isfinite(result.last_loss)  # 12 images / batch 4 = 3 steps per epoch
    resolved = json.loads((result.run_dir / "train_config.json").read_text())
    assert resolved["data"]["format"] == "tar shards" and resolved["data"]["num_images"] == 12
    epochs = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(0.0 <= r["data_wait"] <= 1.0 for r in epochs)


def test_missing_inputs_are_named_as_inputs(tmp_path, capsys):
    """Missing shards were reported as "cannot write"; the converter called its SRC_DIR "--data"."""
    from mae.train.cli import main as pretrain_main

    assert pretrain_main(["--data", str(tmp_path / "x-{0..2}.tar"), "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "do not exist" in err and "cannot write" not in err and "Traceback" not in err
    assert make_shards([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "SRC_DIR" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- hostile inputs


def within(seconds: float, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a daemon thread: its result (or its exception), or a test failure after ``seconds``
    instead of a hang (a FIFO opened for reading waits for a writer forever)."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 (handed to the test below)
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s: it hangs"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def shard_folder(tmp_path, n=6, shard_size=3):
    assert make_shards([str(solid_images(tmp_path / "src", n)), str(tmp_path / "out"), "--shard-size",
                        str(shard_size)]) == 0
    return tmp_path / "out"


def edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, key", [
    (lambda m: m["shards"][1].pop("sha256"), "shards[1].sha256"),
    (lambda m: m["shards"][0].pop("name"), "shards[0].name"),
    (lambda m: m.pop("shards"), "shards"),
    (lambda m: m["shards"][0].update(size="12"), "shards[0].size"),
    (lambda m: m.update(shards={"a": 1}), "shards"),
    (lambda m: m["shards"].__setitem__(0, "shard-000000.tar"), "shards[0]"),
])
def test_a_manifest_missing_a_key_is_named(tmp_path, change, key):
    """A missing key was a KeyError traceback; a wrong type a TypeError deep in the reader."""
    folder = shard_folder(tmp_path)
    edit_manifest(folder, change)
    with pytest.raises(ValueError, match=re.escape(f"key {key!r}")) as err:
        resolve_shards(str(folder))
    assert "manifest.json" in str(err.value) and "\n" not in str(err.value)


def test_the_recorded_index_is_what_the_headers_say(tmp_path, monkeypatch):
    """mae-make-shards records each shard's index; the reader uses it and reads no tar header."""
    folder = shard_folder(tmp_path, n=11, shard_size=4)
    shards, manifest = resolve_shards(str(folder))
    recorded = read_index(str(folder), manifest)
    assert [(e["count"], e["skipped"]) for e in manifest["shards"]] == [(4, 0), (4, 0), (3, 0)]
    for shard, index in zip(shards, recorded, strict=True):
        scanned = index_shard(shard)
        assert index.offsets.dtype == index.sizes.dtype == np.int64 and index.skipped == scanned.skipped == 0
        assert (index.offsets == scanned.offsets).all() and (index.sizes == scanned.sizes).all()
    by_headers = ShardSamples(shards, img_size=8, noise=MaskingSpec(4), seed=0)
    monkeypatch.setattr(shards_module, "index_shard", lambda path: pytest.fail(f"{path}'s headers were read"))
    by_index = ShardSamples(shards, img_size=8, noise=MaskingSpec(4), seed=0, index=recorded)
    assert [by_index.source(i)[0] for i in range(11)] == [by_headers.source(i)[0] for i in range(11)]


def test_a_folder_without_an_index_is_read_from_its_headers(tmp_path):
    """Folders converted before the index existed (no 'index' key, no 'skipped') keep working: headers are read."""
    folder = shard_folder(tmp_path, n=7, shard_size=3)
    recorded = read_index(str(folder), resolve_shards(str(folder))[1])
    (folder / "index.npy").unlink()
    edit_manifest(folder, lambda m: [m.pop("index")] + [entry.pop("skipped") for entry in m["shards"]])
    shards, manifest = resolve_shards(str(folder))
    assert read_index(str(folder), manifest) is None
    data = ShardSamples(shards, img_size=8, noise=MaskingSpec(4), seed=0, index=None)
    assert data.num_images == 7 and data.skipped == 0
    assert all((a.offsets == b.offsets).all() and (a.sizes == b.sizes).all()
               for a, b in zip(data.index, recorded, strict=True))
    data.split(rank=0, world_size=1, batch_size=2)
    data.set_epoch(0)
    seen = [identity(img) for img, _ in data]  # 3 batches of 2: one image is left out
    assert len(seen) == len(set(seen)) == 6 and set(seen) <= set(range(7))


def forge_index(folder, data: bytes) -> None:
    """Replace index.npy and record the new file's size and SHA-256 in the manifest (a consistent forgery)."""
    (folder / "index.npy").write_bytes(data)
    edit_manifest(folder, lambda m: m["index"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest()))


def rewrite_index(folder, change):
    """Change index.npy's rows in place (``change(rows)``), then forge the manifest to match."""
    rows = np.load(folder / "index.npy")
    change(rows)
    buffer = io.BytesIO()
    np.save(buffer, rows)
    forge_index(folder, buffer.getvalue())


@pytest.mark.parametrize("tamper, fault", [
    (lambda f: f.joinpath("index.npy").write_bytes(f.joinpath("index.npy").read_bytes()[:-8] + bytes(8)),
     r"its SHA-256 is [0-9a-f]{64}, expected [0-9a-f]{64} \(manifest.json's index.sha256\)"),
    (lambda f: f.joinpath("index.npy").write_bytes(f.joinpath("index.npy").read_bytes() + bytes(16)),
     r"the file has \d+ bytes, expected \d+ bytes"),
    (lambda f: rewrite_index(f, lambda rows: rows.__setitem__((4, 0), 10**6)),
     r"shards\[1\] \(shard-000001.tar\) has an offset outside the shard, expected offsets within its 10240 bytes"),
    (lambda f: rewrite_index(f, lambda rows: rows.__setitem__((2, 1), 10**4)),
     r"shards\[0\] \(shard-000000.tar\) has an image that runs past the shard's end"),
    (lambda f: rewrite_index(f, lambda rows: rows.__setitem__((1, 0), 550)),
     r"shards\[0\] \(shard-000000.tar\) has images that overlap"),
    (lambda f: rewrite_index(f, lambda rows: rows.__setitem__((0, 1), -1)),
     r"shards\[0\] \(shard-000000.tar\) has a negative image size"),
    (lambda f: rewrite_index(f, lambda rows: rows.__setitem__(slice(0, 2), rows[[1, 0]])),
     r"shards\[0\] \(shard-000000.tar\) has offsets that do not increase"),
    (lambda f: edit_manifest(f, lambda m: m["shards"][2].update(count=4)), r"it has 8 rows, expected 10, the sum"),
    (lambda f: forge_index(f, b"not an array"), r"not a \.npy array .*expected one \(N, 2\) int64 array"),
    (lambda f: forge_index(f, f.joinpath("index.npy").read_bytes().replace(b"<i8", b"<f8")),  # the header's dtype
     r"an array float64 \(8, 2\), expected one \(N, 2\) int64 array"),
])
def test_a_tampered_index_is_refused_naming_the_file(tmp_path, tamper, fault):
    """An index that does not match its manifest and shards would read the wrong bytes as images."""
    folder = shard_folder(tmp_path, n=8, shard_size=3)
    tamper(folder)
    shards, manifest = resolve_shards(str(folder))
    with pytest.raises(ValueError, match=re.escape(repr(str(folder / "index.npy"))) + ": " + fault) as err:
        read_index(str(folder), manifest)
    assert str(err.value).endswith("convert the folder again") and "\n" not in str(err.value)


@pytest.mark.parametrize("change, key", [
    (lambda m: m["index"].pop("sha256"), "index.sha256"),
    (lambda m: m["index"].update(name="../index.npy"), "index.name"),
    (lambda m: m["shards"][1].pop("count"), "shards[1].count"),
    (lambda m: m["shards"][0].update(skipped=-1), "shards[0].skipped"),
])
def test_a_bad_index_entry_is_named(tmp_path, change, key):
    folder = shard_folder(tmp_path)
    edit_manifest(folder, change)
    with pytest.raises(ValueError, match=re.escape(f"manifest.json': key {key!r}")):
        read_index(str(folder), resolve_shards(str(folder))[1])


@pytest.mark.parametrize("name", ["../x.tar", "/etc/passwd", "sub/shard.tar", "..", "link.tar"])
def test_a_manifest_name_outside_the_folder_is_refused(tmp_path, name):
    """'../x.tar' and absolute names were read from wherever they pointed."""
    folder = shard_folder(tmp_path)
    outside = tmp_path / "x.tar"
    outside.write_bytes((folder / "shard-000000.tar").read_bytes())
    (folder / "link.tar").symlink_to(outside)
    (folder / "sub").mkdir()
    (folder / "sub" / "shard.tar").write_bytes(outside.read_bytes())
    edit_manifest(folder, lambda m: m["shards"][0].update(name=name))
    with pytest.raises(ValueError, match=r"key 'shards\[0\]\.name' must be a plain file name inside the manifest's"):
        resolve_shards(str(folder))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_shard_changed_after_conversion_is_detected(tmp_path, num_workers):
    """A byte flipped in a shard's padding (the tar still reads, every image decodes) was never noticed."""
    folder = shard_folder(tmp_path)
    shard = folder / "shard-000001.tar"
    with tarfile.open(shard) as tar:
        info = tar.next()
    padding = info.offset_data + info.size  # the member's data ends inside a 512-byte block: zeros follow
    assert padding % 512, "the test needs a member whose size is not a multiple of 512"
    raw = bytearray(shard.read_bytes())
    raw[padding] ^= 0xFF
    shard.write_bytes(bytes(raw))
    shards, manifest = resolve_shards(str(folder))  # same size: only the checksum tells
    data = ShardSamples(shards, img_size=8, noise=MaskingSpec(4), seed=0,
                        sha256=[entry["sha256"] for entry in manifest["shards"]])
    data.split(rank=0, world_size=1, batch_size=2)
    data.set_epoch(0)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=num_workers)
    with pytest.raises(ValueError, match=r"shard-000001\.tar' is corrupt or was changed since mae-make-shards"):
        within(60, list, loader)
    data.set_epoch(1)  # verified once per run: later epochs trust the first
    assert len(within(60, list, torch.utils.data.DataLoader(data, batch_size=2, num_workers=num_workers))) == 3


def test_each_shard_is_verified_by_exactly_one_reader():
    """Every (rank, worker) pair of every process verifies its own shards: together each shard once."""
    owners = []
    for world_size, workers in [(1, 1), (2, 3), (4, 2), (3, 5)]:
        data = ShardSamples.__new__(ShardSamples)  # the split needs no shard read
        data.shards, data.sha256 = [None] * 11, ["0" * 64] * 11
        owners = []
        for rank in range(world_size):
            data.rank, data.world_size = rank, world_size
            owners += [s for worker in range(workers) for s in data.verified_by(worker, workers)]
        assert sorted(owners) == list(range(11))


def test_a_huge_brace_pattern_is_refused_fast(tmp_path):
    """{0..99999999} built 10^8 names (gigabytes, minutes) before looking at one."""
    for pattern in ["s-{0..99999999}.tar", "s-{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}.tar",
                    "s-{" + "9" * 5000 + "..0}.tar"]:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"more than (100000 shards \(the limit, MAX_SHARD_NAMES\)|18 digits)"):
            within(10, resolve_shards, str(tmp_path / pattern))
        assert time.perf_counter() - start < 2
    with pytest.raises(ValueError, match="more than 3 shards"):
        expand_braces("{0..3}", limit=3)


@pytest.fixture
def fifo():
    """``fifo(path)`` makes a FIFO; afterwards any reader a regression left waiting on one is released (a writer
    opens and closes it), so that a failed test does not keep the session from ending."""
    made = []

    def make(path):
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    for path in made:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader waiting (ENXIO), or the FIFO was removed
            pass


def test_a_fifo_as_data_is_refused_not_waited_on(tmp_path, capsys, fifo):
    from mae.train.cli import main as pretrain_main

    for name in ["pipe", "pipe.tar"]:
        code = within(60, pretrain_main, ["--data", str(fifo(tmp_path / name)), "--output-dir",
                                          str(tmp_path / "runs"), "--name", name.replace(".", "_")])
        err = capsys.readouterr().err
        assert code == 2 and "FIFO" in err and name in err and "Traceback" not in err


def test_a_fifo_as_a_shard_is_refused(tmp_path, fifo):
    folder = shard_folder(tmp_path)
    pipe = fifo(tmp_path / "pipe.tar")
    with pytest.raises(ValueError, match=r"pipe\.tar' is a FIFO \(named pipe\), not a regular file"):
        within(10, resolve_shards, f"{folder / 'shard-000000.tar'}::{pipe}")
    with pytest.raises(ValueError, match=r"shard .*pipe\.tar' is a FIFO"):
        within(10, ShardSamples, [pipe], img_size=8, noise=MaskingSpec(4), seed=0)
    (folder / "shard-000001.tar").unlink()
    fifo(folder / "shard-000001.tar")
    with pytest.raises(ValueError, match=r"shard-000001\.tar' is a FIFO"):
        within(10, resolve_shards, str(folder))
    (folder / "manifest.json").unlink()
    fifo(folder / "manifest.json")
    with pytest.raises(ValueError, match=r"manifest\.json' is a FIFO"):
        within(10, resolve_shards, str(folder))


def test_a_fifo_in_an_image_folder_is_skipped_and_named(tmp_path, fifo):
    src = solid_images(tmp_path / "src", 3)
    fifo(src / "pipe.png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\) out of 4 \(e\.g\. .*pipe\.png"):
        readable, skipped = within(30, scan_image_folder, src)
    assert len(readable) == 3 and [p.name for p in skipped] == ["pipe.png"]
    assert within(60, make_shards, [str(src), str(tmp_path / "out")]) == 0  # the converter scans the same way
