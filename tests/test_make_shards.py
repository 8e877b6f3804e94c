"""mae-make-shards --max-side: large images shrunk once (shorter side N, aspect kept, RGB JPEG q95), small ones stored
byte for byte, the manifest's record of it, the pixels against a direct Pillow resize, and bad values refused."""

from __future__ import annotations

import io
import json
import math
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import mae
from mae.train.data import make_shards as make_shards_module
from mae.train.data.augment import MaskingSpec, normalize_on_device
from mae.train.data.make_shards import main, make_shards, shrink_image
from mae.train.data.shards import ShardSamples, resolve_shards

N = 40  # --max-side of these tests (the floor is 32)


def photo(height, width, seed=0):
    """A smooth random RGB image (uint8 (H, W, 3)): blurry colour blobs, like a photo at low resolution."""
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def members(out_dir):
    """{member name: bytes} of every shard in a mae-make-shards folder."""
    found = {}
    for shard in sorted(out_dir.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return found


@pytest.fixture
def mixed_folder(tmp_path):
    """Three large images (a landscape JPEG, a portrait PNG with alpha, a 16-bit grey PNG), one small JPEG and one
    PNG whose shorter side is exactly N."""
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photo(60, 90)).save(src / "landscape.jpg", quality=90)              # -> 60 x 40
    Image.fromarray(photo(72, 50, 1)).convert("RGBA").save(src / "portrait.png")        # -> 40 x 58 (57.6 rounded)
    grey16 = (photo(48, 64, 2)[:, :, 0].astype(np.uint16) * 257)
    Image.fromarray(grey16).save(src / "grey16.png")                                   # I;16 -> 53 x 40 (53.3)
    Image.fromarray(photo(30, 44, 3)).save(src / "small.jpg", quality=90)               # kept: shorter side 30
    Image.fromarray(photo(N, 50, 4)).save(src / "exact.png")                           # kept: shorter side == N
    return src


def test_large_images_shrink_to_max_side_and_small_ones_stay_byte_identical(mixed_folder, tmp_path):
    manifest = make_shards(mixed_folder, tmp_path / "out", shard_size=2, max_side=N)
    assert manifest["max_side"] == N and manifest["num_resized"] == 3 and manifest["num_samples"] == 5
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    found = members(tmp_path / "out")
    sources = {p.read_bytes(): p.suffix for p in mixed_folder.iterdir()}
    kept = {name: data for name, data in found.items() if data in sources}
    assert sorted(sources[data] for data in kept.values()) == [".jpg", ".png"]  # small.jpg, exact.png as they were
    assert all(name.endswith(sources[data]) for name, data in kept.items())     # with their own suffix
    shrunk = {}
    for name, data in found.items():
        if name not in kept:
            assert name.endswith(".jpg")
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == "JPEG" and im.mode == "RGB"  # alpha dropped, 16-bit grey made RGB
                shrunk[im.size] = name
    assert sorted(shrunk) == [(40, 58), (53, 40), (60, 40)]  # (width, height): shorter side N, aspect kept


def test_default_and_a_large_max_side_store_every_file_unchanged(mixed_folder, tmp_path):
    plain = make_shards(mixed_folder, tmp_path / "plain", shard_size=2)
    assert plain["max_side"] is None and plain["num_resized"] == 0
    assert sorted(members(tmp_path / "plain").values()) == sorted(p.read_bytes() for p in mixed_folder.iterdir())
    large = make_shards(mixed_folder, tmp_path / "large", shard_size=2, max_side=1000)
    assert large["num_resized"] == 0
    for a, b in zip(plain["shards"], large["shards"], strict=True):
        assert a == b  # the same tar files, byte for byte (same SHA-256)


def test_shrunk_pixels_match_a_direct_pillow_resize():
    """PNG (decoded whole): Pillow's bicubic resize saved as a q95 JPEG, up to torch's uint8 rounding of the same
    filter (measured 0.15 grey levels after both re-encodes; 2.48 between either and the unencoded resize, so the
    bound 0.5 tells the filter apart from the re-encode). JPEG: decoded at 1/2 scale (the
    DCT-scaling rule keeps 2x the target, 144 x 96 here), then resized: mean |diff| from a direct resize of the full
    decode measured 2.77 grey levels on this photo, of which 2.49 is the q95 re-encode alone (decoding at 1/4 gives
    2.87, at 1/8 6.9; nearest-neighbour resizing 6.4, a resize one pixel too wide 6.7). Bound: 3.2."""
    from skimage import data as skdata

    cat = skdata.chelsea()  # (300, 451, 3), a photograph never trained on elsewhere in the tests
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(cat).save(png, format="PNG")
    Image.fromarray(cat).save(jpeg, format="JPEG", quality=90)
    direct = Image.fromarray(cat).resize((72, 48), Image.BICUBIC)  # 451 * 48 / 300 = 72.2 -> 72
    expected = io.BytesIO()
    direct.save(expected, format="JPEG", quality=95)
    shrunk = np.asarray(Image.open(io.BytesIO(shrink_image(png.getvalue(), "cat.png", 48)))).astype(np.float64)
    assert np.abs(shrunk - np.asarray(Image.open(expected))).mean() < 0.5

    full = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB"))
    direct = np.asarray(Image.fromarray(full).resize((72, 48), Image.BICUBIC)).astype(np.float64)
    shrunk = np.asarray(Image.open(io.BytesIO(shrink_image(jpeg.getvalue(), "cat.jpg", 48)))).astype(np.float64)
    assert shrunk.shape == direct.shape and np.abs(shrunk - direct).mean() < 3.2
    assert shrink_image(jpeg.getvalue(), "cat.jpg", 300) is None  # shorter side 300: kept as is


def test_jpeg_decode_keeps_twice_the_target_size(monkeypatch):
    """The DCT-scaling rule of augment.REDUCING_GAP: fast conversion, but never decoded below 2x the result."""
    asked, decode = [], make_shards_module.decode_rgb

    def spy(data, name, *, min_size=None):
        asked.append(min_size)
        return decode(data, name, min_size=min_size)

    monkeypatch.setattr(make_shards_module, "decode_rgb", spy)
    landscape, portrait = io.BytesIO(), io.BytesIO()
    Image.fromarray(photo(300, 451)).save(landscape, format="JPEG")
    Image.fromarray(photo(300, 180)).save(portrait, format="JPEG")  # decoded at 1/2: 90 x 150 >= 2 x (40 x 67)
    with Image.open(io.BytesIO(shrink_image(landscape.getvalue(), "x.jpg", 48))) as im:
        assert im.size == (72, 48)
    with Image.open(io.BytesIO(shrink_image(portrait.getvalue(), "y.jpg", 40))) as im:
        assert im.size == (40, 67)  # 300 * 40 / 180 = 66.7 -> 67
    assert asked == [(144, 96), (80, 134)]


def test_shrunk_shards_train_end_to_end(mixed_folder, tmp_path):
    make_shards(mixed_folder, tmp_path / "out", shard_size=2, max_side=N)
    shards, manifest = resolve_shards(str(tmp_path / "out"))
    model = mae.create_model("mae_vit_test")  # 32 px, patch 8: 16 patches
    data = ShardSamples(shards, img_size=32, noise=MaskingSpec(model.config.num_patches), seed=0)
    data.split(rank=0, world_size=1, batch_size=5)
    data.set_epoch(0)
    (imgs, noise), = list(torch.utils.data.DataLoader(data, batch_size=5, num_workers=0))
    assert imgs.dtype == torch.uint8 and imgs.shape == (5, 3, 32, 32) and manifest["num_resized"] == 3
    out = model(normalize_on_device(imgs, mae.IMAGENET_MEAN, mae.IMAGENET_STD), noise=noise)
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and model.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, -896, 31, True, 1.5, "896"])
def test_bad_max_side_is_refused(tmp_path, mixed_folder, bad):
    with pytest.raises(ValueError, match=f"--max-side .*got {re.escape(repr(bad))}"):
        make_shards(mixed_folder, tmp_path / "out", max_side=bad)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_cli_max_side(mixed_folder, tmp_path, capsys):
    assert main([str(mixed_folder), str(tmp_path / "out"), "--max-side", str(N)]) == 0
    assert "3 resized to shorter side 40" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["max_side"] == N
    assert main([str(mixed_folder), str(tmp_path / "out2"), "--max-side", "16"]) == 2
    err = capsys.readouterr().err
    assert "--max-side must be at least 32 pixels, got 16" in err and "upsampled" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main([str(mixed_folder), str(tmp_path / "out3"), "--max-side", "big"])
    assert "--max-side" in capsys.readouterr().err


def broken_jpeg(height=200, width=300):
    """A JPEG whose header reads (the folder scan accepts it) but whose data is cut in half."""
    data = io.BytesIO()
    Image.fromarray(photo(height, width)).save(data, format="JPEG")
    return data.getvalue()[: len(data.getvalue()) // 2]


def test_an_image_that_cannot_be_decoded_is_skipped_and_named(mixed_folder, tmp_path, capsys):
    """One bad file does not cost the shards already written: it is skipped, named and counted, as at scan time."""
    (mixed_folder / "broken.jpg").write_bytes(broken_jpeg())
    assert main([str(mixed_folder), str(tmp_path / "out"), "--max-side", str(N), "--shard-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 image file(s) that could not be decoded" in err and "broken.jpg" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_samples"] == 5 and manifest["num_skipped"] == 1 and manifest["num_resized"] == 3
    assert sum(entry["count"] for entry in manifest["shards"]) == 5 == len(members(tmp_path / "out"))
    assert len(resolve_shards(str(tmp_path / "out"))[0]) == 3  # the reader takes all three shards


def test_a_shard_left_without_images_is_not_written(tmp_path):
    """Shard 0 would hold only undecodable images: no empty tar, and the shards that exist are numbered 0, 1, ..."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        (src / f"broken{i}.jpg").write_bytes(broken_jpeg())
    Image.fromarray(photo(30, 44)).save(src / "small.jpg", quality=90)
    manifest = make_shards(src, tmp_path / "out", shard_size=1, seed=0, max_side=N)
    assert manifest["num_samples"] == 1 and manifest["num_skipped"] == 2
    assert [entry["name"] for entry in manifest["shards"]] == ["shard-000000.tar"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.npy", "manifest.json", "shard-000000.tar"]


def test_a_folder_whose_every_image_fails_to_decode_writes_no_manifest(tmp_path, capsys):
    """It used to write a manifest of no shard and report success; mae-pretrain then blamed the manifest."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        (src / f"broken{i}.jpg").write_bytes(broken_jpeg())
    assert main([str(src), str(tmp_path / "out"), "--max-side", str(N)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "none of the 2 image file(s) of SRC_DIR" in err and "no shard or manifest written" in err
    assert not any((tmp_path / "out").iterdir())


def test_an_unfinished_conversion_is_named_when_refused(mixed_folder, tmp_path, capsys):
    """A conversion that stopped part way (no manifest) is not overwritten, and the refusal says what it is."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"")
    assert main([str(mixed_folder), str(out)]) == 2
    assert "did not finish: no manifest.json" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["shard-000000.tar"]


def test_a_full_disk_is_one_line_and_says_what_is_left(mixed_folder, tmp_path, monkeypatch, capsys):
    """The converter ends like the other commands (mae.runtime.cli.run_command): no traceback, says what is left."""
    written = []

    def full_after_one(path, *args):
        if written:
            raise OSError(28, "No space left on device", str(path))
        written.append(path)
        path.write_bytes(b"")  # a finished shard
        return make_shards_module._Shard({"name": path.name}, None, 0, [])

    monkeypatch.setattr(make_shards_module, "_write_shard", full_after_one)
    assert main([str(mixed_folder), str(tmp_path / "out"), "--shard-size", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert "holds the shards finished so far but no manifest.json" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shard-000000.tar"]


def test_bad_arguments_of_the_public_pieces_are_named(tmp_path, mixed_folder):
    """shrink_image's data, crop_resize's size, make_shards' seed: a TypeError/ValueError naming the argument."""
    from mae.train.data.augment import CropBox, crop_resize

    with pytest.raises(TypeError, match="image x.jpg: data must be the encoded file's bytes, got str"):
        shrink_image("not bytes", "x.jpg", N)
    pixels = np.zeros((10, 10, 3), np.uint8)
    for bad, error in (((0, 5), ValueError), ((5,), TypeError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="size must be"):
            crop_resize(pixels, CropBox(0, 0, 10, 10), bad)
    assert crop_resize(pixels, CropBox(0, 0, 10, 10), (4, 6)).shape == (3, 4, 6)
    with pytest.raises(TypeError, match="--seed must be an int, got 'a'"):
        make_shards(mixed_folder, tmp_path / "out", seed="a")
    assert not (tmp_path / "out").exists()
