"""Whole evaluation runs on tiny image folders: the linear probe learns, resume is exact, DDP equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.eval import FinetuneConfig, KNNConfig, LinProbeConfig, finetune, knn, linear_probe
from mae.eval.cli import linprobe_main
from mae.eval.run import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, RESULTS_FILE, Run

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "mae_vit_test", "img_size": 32, "patch_size": 8, "device": "cpu", "progress": False, "num_workers": 0}


def make_folder(root: Path, per_class: int = 16, val_per_class: int = 4, size: int = 32) -> Path:
    """train/ and val/ with two classes a linear classifier can tell apart: dark and bright noise images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for cls, (lo, hi) in (("dark", (0, 90)), ("bright", (165, 256))):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(lo, hi, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("toy"))


def test_linear_probe_separates_a_separable_set(toy, tmp_path):
    cfg = LinProbeConfig(**TINY, data=str(toy), cache_features=True, epochs=10, batch_size=8, blr=16.0,
                         output_dir=str(tmp_path), name="probe")
    results = linear_probe(cfg)
    assert results["val_acc1"] == 100.0
    assert "val_acc5" not in results  # two classes
    run = tmp_path / "probe"
    saved = json.loads((run / RESULTS_FILE).read_text())
    assert saved["val_acc1"] == 100.0
    resolved = json.loads((run / CONFIG_FILE).read_text())
    assert resolved["warmup_epochs"] == pytest.approx(10 * 10 / 90) and resolved["num_classes"] == 2
    records = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 11))
    head = torch.load(run / CHECKPOINT_FILE, weights_only=True)["model"]
    assert set(head) == {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked",
                         "head.1.weight", "head.1.bias"}  # BatchNorm without affine parameters + Linear


def test_knn_run_writes_results(toy, tmp_path):
    results = knn(KNNConfig(**TINY, data=str(toy), k=5, output_dir=str(tmp_path), name="knn"))
    assert results["val_acc1"] == 100.0 and results["k"] == 5
    again = knn(KNNConfig(**TINY, data=str(toy), k=5, output_dir=str(tmp_path), name="knn"), resume=tmp_path / "knn")
    assert again["val_acc1"] == results["val_acc1"]


def _interrupt_after_epochs(monkeypatch, epochs: int) -> None:
    """Make the run die during evaluation of epoch ``epochs + 1`` (its checkpoint of ``epochs`` is written)."""
    original, calls = Run.evaluate, []

    def evaluate(self, model, dataset):
        calls.append(1)
        if len(calls) > epochs:
            raise KeyboardInterrupt
        return original(self, model, dataset)

    monkeypatch.setattr(Run, "evaluate", evaluate)


@pytest.mark.parametrize("protocol", ["linprobe", "finetune"])
def test_resume_is_exact(protocol, toy, tmp_path, monkeypatch):
    if protocol == "linprobe":  # with augmentation: random crops and flips must repeat exactly
        run, cfg = linear_probe, LinProbeConfig(**TINY, data=str(toy), epochs=3, batch_size=8, blr=16.0)
    else:  # RandAugment, random erasing, mixup/cutmix, drop path
        run, cfg = finetune, FinetuneConfig(**TINY, data=str(toy), epochs=3, batch_size=8, blr=1e-3)
    straight = run(cfg.replace(output_dir=str(tmp_path), name="straight"))
    with monkeypatch.context() as m:
        _interrupt_after_epochs(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run(cfg.replace(output_dir=str(tmp_path), name="cut"))
    assert torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=True)["epoch"] == 1
    resumed = run(cfg.replace(output_dir=str(tmp_path), name="cut"), resume=tmp_path / "cut")
    a = torch.load(tmp_path / "straight" / CHECKPOINT_FILE, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=0, msg=key)
    assert resumed["val_loss"] == straight["val_loss"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()}
    again = run(cfg, resume=tmp_path / "cut")  # a finished run: its results, nothing rewritten
    assert again["val_acc1"] == resumed["val_acc1"] and again["seconds"] == resumed["seconds"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()} == before
    with pytest.raises(ValueError, match="cannot change"):
        run(cfg.replace(seed=5), resume=tmp_path / "cut")


def _linprobe_cli(toy: Path, out: Path, name: str, batch: int) -> list[str]:
    return ["linprobe", "--model", "mae_vit_test", "--img-size", "32", "--patch-size", "8", "--data", str(toy),
            "--cache-features", "--epochs", "4", "--batch-size", str(batch), "--blr", "16", "--device", "cpu",
            "--num-workers", "0",
            "--no-progress", "--output-dir", str(out), "--name", name]


@pytest.mark.slow
def test_ddp_two_processes_equal_one_for_the_linear_probe(toy, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mae.eval.cli", *_linprobe_cli(toy, tmp_path, "ddp", 8)]
    proc = subprocess.run(two, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert linprobe_main(_linprobe_cli(toy, tmp_path, "single", 16)[1:]) == 0  # one process, the same global batch
    ddp = torch.load(tmp_path / "ddp" / CHECKPOINT_FILE, weights_only=True)
    single = torch.load(tmp_path / "single" / CHECKPOINT_FILE, weights_only=True)
    assert ddp["step"] == single["step"] == 8  # 4 epochs x 32 images / global batch 16
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    results = [json.loads((tmp_path / n / RESULTS_FILE).read_text()) for n in ("ddp", "single")]
    assert results[0]["val_acc1"] == results[1]["val_acc1"]
    assert results[0]["val_loss"] == pytest.approx(results[1]["val_loss"], rel=1e-5)
    assert json.loads((tmp_path / "ddp" / CONFIG_FILE).read_text())["world_size"] == 2
