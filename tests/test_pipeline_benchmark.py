"""benchmarks/pipeline.py runs end to end at a tiny size (CI smoke test); it asserts what it reports, never timings."""

from __future__ import annotations

import json
import os
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
                                              "Pillow draft + uint8", "simplejpeg DCT + uint8 (default)"]
    assert rows[0]["ratio"] == 1.0 and all(r["img_per_s_per_core"] > 0 for r in rows)
    assert "| images | pipeline | img/s per core | vs old |" in proc.stdout


def test_pipeline_benchmark_rejects_bad_arguments():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--rounds", "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "--rounds must be >= 1, got 0" in proc.stderr
