"""The benchmark command runs end to end at a tiny size (CI smoke test). It asserts what it reports, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_tiny_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    has_hf = subprocess.run([sys.executable, "-c", "import transformers"], capture_output=True).returncode == 0
    out_json, out_md, out_png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "scaling.png"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--tiny", "--precision", "fp32", "bf16",
        "--sweep", "--plot", str(out_png), "--json", str(out_json), "--readme", str(out_md),
    ]
    if not has_hf:
        cmd.append("--no-hf")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads(out_json.read_text())
    rows = result["rows"]
    ours = {"mae-pytorch plain", "mae-pytorch loss_only"}
    impls = ours | {"HF ViTMAE"} if has_hf else ours
    assert {(r["precision"], r["impl"]) for r in rows} == {(p, i) for p in ("fp32", "bf16") for i in impls}
    for r in rows:
        assert len(r["train_s"]) == len(r["forward_s"]) == 2  # --tiny: two alternating rounds
        assert r["train_img_s"] > 0 and r["forward_img_s"] > 0
        assert r["train_flops"] > r["forward_flops"] > 0  # backward costs FLOPs too
        assert 0 < r["mfu"] and r["matmul_peak_flops"] > 0
        if has_hf:
            assert r["train_ratio_vs_hf"] > 0
    if has_hf:  # the same dimensions: FLOPs within a few percent (ours skips work the loss does not need)
        flops = {(r["precision"], r["impl"]): r["train_flops"] for r in rows}
        assert 0.7 < flops[("fp32", "mae-pytorch loss_only")] / flops[("fp32", "HF ViTMAE")] <= 1.0
        # the loss-only path skips the last decoder block's work on visible patches; plain does all of it
        assert flops[("fp32", "mae-pytorch loss_only")] < flops[("fp32", "mae-pytorch plain")]

    axes = {r["axis"] for r in result["sweep"]}
    assert axes == {"batch_size", "img_size", "mask_ratio"}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = out_md.read_text()
    assert "| precision | implementation | train img/s |" in markdown
    assert "python benchmarks/bench.py --tiny" in markdown
    assert "mae-pytorch" in proc.stdout


def test_benchmark_rejects_bad_arguments():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--batch-size", "0", "--no-hf"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2
    assert "--batch-size" in proc.stderr and "got 0" in proc.stderr
