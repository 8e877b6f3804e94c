"""Evaluation run folders keep pretraining's promises: one process at a time, plain names only, default names that
differ per checkpoint, a finished run never rewritten, and an attempt that saved nothing may be started again."""

from __future__ import annotations

import json

import pytest

from mae.eval import KNNConfig
from mae.eval.cli import finetune_main, knn_main
from mae.runtime.run_folder import RunLock

KNN = ["--model", "mae_vit_test", "--no-progress", "--batch-size", "512"]


def test_a_second_run_with_the_same_name_waits_for_none(tmp_path, capsys):
    with RunLock(tmp_path / "d", "mae-knn"):  # another process running under the same name
        assert knn_main([*KNN, "--output-dir", str(tmp_path), "--name", "d"]) == 2
    err = capsys.readouterr().err
    assert "another mae-knn process is running" in err and err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".lock"]  # nothing written by the second run


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ".", "", "x\\y"])
def test_names_are_plain_folder_names(tmp_path, name):
    with pytest.raises(ValueError, match="name must be a plain folder name"):
        KNNConfig(model="mae_vit_test", name=name, output_dir=str(tmp_path / "runs"))
    assert not (tmp_path / "outside").exists()


def test_default_names_differ_per_training_checkpoint(tmp_path):
    a = KNNConfig(checkpoint=str(tmp_path / "runs" / "a" / "checkpoints" / "last"))
    b = KNNConfig(checkpoint=str(tmp_path / "runs" / "b" / "checkpoints" / "last"))
    assert a.run_name == "knn-digits-a-last" and b.run_name == "knn-digits-b-last"
    assert KNNConfig(checkpoint="weights/mae_pretrain_vit_base.pth").run_name == "knn-digits-mae_pretrain_vit_base.pth"


def test_a_run_of_another_encoder_is_named_and_resume_is_not_suggested(tmp_path, capsys):
    assert knn_main([*KNN, "--output-dir", str(tmp_path), "--name", "d"]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    assert knn_main(["--model", "mae_vit_tiny_patch16", "--img-size", "32", "--patch-size", "8", "--no-progress",
                     "--output-dir", str(tmp_path), "--name", "d"]) == 2
    err = capsys.readouterr().err
    assert "holds a run of mae_vit_test" in err and "--resume" not in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before


def test_an_attempt_that_saved_nothing_can_be_run_again(tmp_path):
    run = tmp_path / "d"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"protocol": "knn"}))  # what a run stopped by a bad image leaves
    (run / "metrics.jsonl").write_text("")
    assert knn_main([*KNN, "--output-dir", str(tmp_path), "--name", "d"]) == 0
    assert json.loads((run / "results.json").read_text())["protocol"] == "knn"


def test_a_folder_of_someone_else_is_never_used(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    assert knn_main([*KNN, "--output-dir", str(tmp_path), "--name", "d"]) == 2
    assert "does not hold an evaluation run (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("flag, value", [("--smoothing", "1.5"), ("--mixup", "nan"), ("--weight-decay", "inf"),
                                         ("--warmup-epochs", "nan"), ("--auto-augment", "rand-x9"),
                                         ("--auto-augment", "bogus"), ("--drop-path", "1.0"), ("--reprob", "-0.1")])
def test_evaluation_settings_are_checked_like_pretrainings(tmp_path, capsys, flag, value):
    assert finetune_main(["--model", "mae_vit_test", flag, value, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag.lstrip("-").replace("-", "_") in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("flag, value, says", [("--temperature", "inf", "temperature must be a finite number"),
                                               ("--temperature", "0", "temperature must be positive"),
                                               ("--k", "5000", "k=5000 neighbours cannot be found among the 1438")])
def test_knn_settings_are_checked(tmp_path, capsys, flag, value, says):
    assert knn_main([*KNN, flag, value, "--output-dir", str(tmp_path), "--name", "d"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert not (tmp_path / "d" / "config.json").exists()
