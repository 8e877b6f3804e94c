"""benchmarks/pipeline.py and benchmarks/data_bound_epoch.py run end to end at a tiny size (CI smoke tests); they
assert what the scripts report, never timings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pipeline_benchmark_tiny_smoke(tmp_path):
    out = tmp_path / "pipeline.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["candidate"] for r in rows] == ["PIL + torchvision (old)", "torchvision.io + uint8",
                                              "Pillow draft + uint8", "simplejpeg DCT + uint8 (default)",
                                              "default, on --max-side copies", "floor: entropy decoding alone"]
    assert rows[0]["ratio"] == 1.0 and all(r["img_per_s_per_core"] > 0 for r in rows)
    assert "| images | pipeline | img/s per core | vs old |" in proc.stdout
    assert "one-time conversion" in proc.stdout and "(--max-side 64)" in proc.stdout


def test_pipeline_benchmark_rejects_bad_arguments():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--rounds", "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "--rounds must be >= 1, got 0" in proc.stderr


def old_pipeline_in_history() -> bool:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from data_bound_epoch import BEFORE, has_commit
    finally:
        sys.path.pop(0)
    return has_commit(BEFORE)


@pytest.mark.slow
@pytest.mark.skipif(not old_pipeline_in_history(), reason="needs this repository's git history (the old pipeline)")
def test_data_bound_epoch_benchmark_tiny_smoke():
    """The three versions train, the old one from git history (it measured no data wait: "n/a", where this checkout
    reports a percentage); no timing is asserted."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_bound_epoch.py"), "--images", "16",
                           "--batch-size", "8", "--epochs", "2", "--rounds", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert re.search(r"\| n/a \| 1\.00x \|$", rows["before (0944ca1: PIL + torchvision)"])
    assert re.search(r"\| \d+% \| [\d.]+x \|$", rows["after (this checkout)"])
    assert re.search(r"\| \d+% \| [\d.]+x \|$", rows["after, on mae-make-shards --max-side 896 shards"])


def test_data_bound_epoch_benchmark_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_bound_epoch.py"), "--epochs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "need --epochs >= 2" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_bound_epoch.py"), "--before", "0" * 40],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is not in this checkout's git history" in proc.stderr
