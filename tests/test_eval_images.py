"""Evaluation reads images with pretraining's reader (mae.io.images): the same rules for bit depth, float images,
unreadable files and symbolic-link cycles, and a file that breaks later is one line naming it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import mae.eval.data
from mae.eval.cli import knn_main
from mae.eval.data import load_data
from mae.io.images import scan_image_folder


def _png(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)


def _folder(root, per_class=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, (lo, hi) in (("dark", (0, 90)), ("bright", (165, 256))):
            for i in range(per_class):
                _png(root / split / cls / f"{i}.png", rng.integers(lo, hi, (32, 32, 3), dtype=np.uint8))
    return root


def test_sixteen_bit_and_float_images_keep_their_values(tmp_path):
    root = _folder(tmp_path / "d")
    _png(root / "train" / "dark" / "deep.png", np.full((32, 32), 32768, dtype=np.uint16))  # half of 16 bits
    Image.fromarray(np.full((32, 32), 0.25, dtype=np.float32), mode="F").save(root / "train" / "dark" / "f.tif")
    train = load_data(str(root), 32).train
    by_name = {p.name: i for i, (p, _) in enumerate(train.samples)}
    deep = np.asarray(train[by_name["deep.png"]][0])
    assert deep.shape == (32, 32, 3) and abs(int(deep[0, 0, 0]) - 128) <= 1  # scaled, not clipped to 255
    assert abs(int(np.asarray(train[by_name["f.tif"]][0])[0, 0, 0]) - 64) <= 1  # [0, 1] floats scaled by 255


def test_unreadable_and_unknown_range_images_are_skipped_counted_and_named(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "train" / "dark" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    Image.fromarray(np.full((32, 32), 70000, dtype=np.int32), mode="I").save(root / "train" / "bright" / "i.tif")
    with pytest.warns(UserWarning, match="skipped 2 unreadable image file"):
        data = load_data(str(root), 32)
    assert len(data.train) == 8 and "2 unreadable file(s) skipped" in data.description
    assert "cut.png" in data.description or "i.tif" in data.description


def test_a_symlink_cycle_in_a_class_folder_neither_repeats_nor_relabels(tmp_path):
    root = _folder(tmp_path / "d")
    os.symlink("..", root / "train" / "dark" / "loop")  # train/dark/loop -> train/
    os.symlink(".", root / "train" / "bright" / "self")
    data = load_data(str(root), 32)
    labels = sorted(label for _, label in data.train.samples)
    assert labels == [0] * 4 + [1] * 4  # 4 bright (class 0), 4 dark (class 1): each image once, its own class
    assert data.classes == ["bright", "dark"]


def test_a_file_that_breaks_after_the_scan_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    root = _folder(tmp_path / "d")
    bad = root / "val" / "dark" / "0.png"

    def break_after_scan(*args, **kwargs):  # the scan reads it fine; it is broken when the worker decodes it
        found = scan_image_folder(*args, **kwargs)
        if args[0].name == "val":
            bad.write_bytes(b"not an image any more")
        return found

    monkeypatch.setattr(mae.eval.data, "scan_image_folder", break_after_scan)
    assert knn_main(["--model", "mae_vit_test", "--img-size", "32", "--patch-size", "8", "--data", str(root),
                     "--k", "4", "--num-workers", "1", "--no-progress", "--output-dir", str(tmp_path),
                     "--name", "k"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0.png" in err and "cannot be" in err and "Traceback" not in err
    assert not (tmp_path / "k" / "results.json").exists()


def test_knn_on_a_folder_records_what_it_read(tmp_path):
    root = _folder(tmp_path / "d")
    assert knn_main(["--model", "mae_vit_test", "--img-size", "32", "--patch-size", "8", "--data", str(root),
                     "--k", "4", "--no-progress", "--output-dir", str(tmp_path), "--name", "k"]) == 0
    config = json.loads((tmp_path / "k" / "config.json").read_text())
    assert config["num_train"] == 8 and config["num_classes"] == 2 and config["recipe"] == "small-data"
