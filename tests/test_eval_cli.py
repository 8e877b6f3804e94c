"""The commands mae-knn / mae-linprobe / mae-finetune: a run through the CLI, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mae
from mae.eval.cli import finetune_main, knn_main, linprobe_main
from mae.eval.data import DIGITS_VAL_FRACTION, digits_split, load_data

TINY = ["--model", "mae_vit_test", "--img-size", "32", "--patch-size", "8", "--device", "cpu", "--no-progress",
        "--num-workers", "0"]


def _folder(root: Path, train=("a", "b"), val=("a", "b")) -> Path:
    for split, classes in (("train", train), ("val", val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 40 if c == "a" else 200, np.uint8)).save(root / split / c / "0.png")
    return root


def test_knn_cli_on_the_builtin_digits(tmp_path, capsys):
    assert knn_main(["--model", "mae_vit_test", "--no-progress", "--output-dir", str(tmp_path), "--name", "d"]) == 0
    out = capsys.readouterr().out
    assert "mae-knn: val_acc1" in out
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert results["num_classes"] == 10 and 0 <= results["val_acc1"] <= 100 and "val_acc5" in results
    assert results["encoder"]["img_size"] == 32 and results["encoder"]["patch_size"] == 8  # digits defaults
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["k"] == 20 and config["temperature"] == 0.07 and config["batch_size"] == 256
    # The same folder again is refused (nothing is overwritten).
    assert knn_main(["--model", "mae_vit_test", "--output-dir", str(tmp_path), "--name", "d"]) == 2
    assert "already holds this knn run" in capsys.readouterr().err


def _error(main, argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path)]
    assert "give exactly one of --checkpoint" in _error(knn_main, ["--device", "cpu", *out], capsys)
    assert "not both" in _error(knn_main, ["--model", "mae_vit_test", "--checkpoint", "x", *out], capsys)
    assert "is not a preset" in _error(linprobe_main, ["--model", "vit_giant", *out], capsys)
    assert "does not exist" in _error(finetune_main, ["--checkpoint", str(tmp_path / "nope.pth"), *out], capsys)
    assert "does not exist" in _error(knn_main, [*TINY, "--data", str(tmp_path / "none"), *out], capsys)
    no_val = tmp_path / "no_val"
    (no_val / "train" / "a").mkdir(parents=True)
    assert "no val/ subfolder" in _error(knn_main, [*TINY, "--data", str(no_val), *out], capsys)
    differ = _folder(tmp_path / "differ", train=("a", "b"), val=("a", "c"))
    err = _error(linprobe_main, [*TINY, "--data", str(differ), *out], capsys)
    assert "class folders of train/ and val/ differ" in err and "['b']" in err and "['c']" in err
    assert "must be even" in _error(finetune_main, [*TINY, "--batch-size", "7", "--mixup", "0.8", *out], capsys)
    assert "warmup_epochs (5.0) must not exceed" in _error(
        finetune_main, [*TINY, "--epochs", "2", "--warmup-epochs", "5", *out], capsys)


def test_cli_checkpoint_errors(tmp_path, capsys):
    not_mae = tmp_path / "other.safetensors"
    save_file({"classifier.weight": torch.zeros(2, 2)}, str(not_mae))
    err = _error(knn_main, ["--checkpoint", str(not_mae), "--device", "cpu", "--output-dir", str(tmp_path)], capsys)
    assert "holds no usable MAE encoder" in err
    err = _error(knn_main, ["--checkpoint", str(not_mae), "--patch-size", "8", "--output-dir", str(tmp_path)], capsys)
    assert "--patch-size 8 was given with --checkpoint" in err
    assert "--resume" in _error(linprobe_main, ["--resume", str(tmp_path / "missing")], capsys)


def test_cli_checkpoint_from_save_pretrained(tmp_path, capsys):
    from conftest import tiny_model

    mae.save_pretrained(tiny_model(), tmp_path / "enc")
    data = _folder(tmp_path / "data")
    argv = ["--checkpoint", str(tmp_path / "enc"), "--data", str(data), "--device", "cpu", "--no-progress",
            "--num-workers", "0", "--k", "1", "--output-dir", str(tmp_path), "--name", "k"]
    assert knn_main(argv) == 0
    results = json.loads((tmp_path / "k" / "results.json").read_text())
    assert results["val_acc1"] == 100.0 and results["encoder"]["checkpoint"] == str(tmp_path / "enc")


@pytest.mark.parametrize("flag", ["--epochs", "--blr", "--lr"])
def test_knn_offers_no_training_flags_it_would_ignore(tmp_path, capsys, flag):
    """kNN trains nothing: a training flag is refused by the parser (it used to be shown, accepted and ignored)."""
    with pytest.raises(SystemExit) as stop:
        knn_main([*TINY, flag, "3", "--output-dir", str(tmp_path)])
    assert stop.value.code == 2 and f"unrecognized arguments: {flag} 3" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    for field in ("epochs", "blr", "lr"):
        assert field not in mae.eval.KNNConfig.__dataclass_fields__
        assert all(field in c.__dataclass_fields__ for c in (mae.eval.LinProbeConfig, mae.eval.FinetuneConfig))


def test_digits_split_is_fixed_stratified_and_disjoint():
    (xt, yt), (xv, yv) = digits_split("train"), digits_split("val")
    assert len(yt) == 1438 and len(yv) == 359 and xt.shape[1:] == (8, 8) and xt.dtype == np.uint8
    for c in range(10):
        n = (yt == c).sum() + (yv == c).sum()
        assert (yv == c).sum() == round(DIGITS_VAL_FRACTION * n)
    train_rows = {x.tobytes() + bytes([y]) for x, y in zip(xt, yt, strict=True)}
    assert sum(x.tobytes() + bytes([y]) in train_rows for x, y in zip(xv, yv, strict=True)) < 5  # a few duplicates
    np.testing.assert_array_equal(digits_split("val")[1], yv)
    data = load_data(None, 32)
    img, label = data.val[0]
    assert img.size == (32, 32) and img.mode == "RGB" and label == yv[0] and data.num_classes == 10
    with pytest.raises(ValueError, match="split must be"):
        digits_split("test")


def test_stops_are_one_line_and_say_how_to_go_on(tmp_path, monkeypatch, capsys):
    """A full disk or Ctrl-C during a protocol: one line (no traceback), exit 1 / 130, and --resume offered only
    where the run saved something to resume from (the CLI shares mae-pretrain's ending: mae.runtime.cli.run_command)."""
    from mae.eval import cli

    def stop_with(error):
        def run(config, resume=None):
            (tmp_path / "d").mkdir(exist_ok=True)
            raise error
        monkeypatch.setitem(cli._PROTOCOLS, "knn", (cli._PROTOCOLS["knn"][0], run, "knn"))

    argv = ["--model", "mae_vit_test", "--output-dir", str(tmp_path), "--name", "d"]
    stop_with(OSError(28, "No space left on device", str(tmp_path / "d" / "features.pt")))
    assert knn_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert "nothing was saved to resume from" in err and "--resume" not in err
    (tmp_path / "d" / "features.pt").write_bytes(b"")  # as if the features had been saved
    stop_with(KeyboardInterrupt())
    assert knn_main(argv) == 130
    assert capsys.readouterr().err == f"mae-knn: interrupted; continue with --resume {tmp_path / 'd'}\n"
    stop_with(FloatingPointError("non-finite loss nan at step 3"))
    assert knn_main(argv) == 1
    assert capsys.readouterr().err == "mae-knn: stopped: non-finite loss nan at step 3\n"
