"""benchmarks/gpu_check.py: its dry run (the whole harness on the CPU at toy sizes) reports every section, and
without --dry-run a machine without CUDA is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["cuda_tests", "pretrain", "throughput", "input_pipeline", "device_decode"]


@pytest.mark.slow
def test_dry_run_reports_every_section(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    table = (tmp_path / "gpu_check.md").read_text()
    assert report["dry_run"] is True and list(report["sections"]) == SECTIONS
    failed = {k: v["error"] for k, v in report["sections"].items() if not v["ok"]}
    assert not failed and done.returncode == 0, (failed, done.stderr[-2000:])
    for name in SECTIONS:
        assert f"| {name} | ok |" in table
    sections = {k: v["result"] for k, v in report["sections"].items()}
    assert sections["pretrain"]["backend"] == "gloo" and sections["pretrain"]["world_size"] == 1
    assert sections["pretrain"]["resume"]["identical"] and sections["pretrain"]["resumed_from"]
    impls = [r["impl"] for r in sections["throughput"]["rows"]]
    assert any("+compile" in i for i in impls) and impls[-1].startswith("HF")
    assert all(0 < r["mfu"] and r["train_img_s"] > 0 for r in sections["throughput"]["rows"])
    assert sections["throughput"]["largest_batch"]["mae_vit_test"]["ours"]["largest_batch"] >= 2
    assert {r["worker"] for r in sections["input_pipeline"]["rows"]} == {
        "decode in the worker (default)", "JPEG left to the device (--decode-device cuda)"}
    assert all(r["cores_per_gpu"] > 0 for r in sections["input_pipeline"]["rows"])
    decode = sections["device_decode"]
    assert decode["device"] == "cpu" and decode["device_img_s"] > 0 and decode["pixel_gap"]["worst_view_mean"] < 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda_unless_dry_run(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA GPU" in done.stderr and "--dry-run" in done.stderr
    assert not list(tmp_path.iterdir())
