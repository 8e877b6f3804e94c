"""benchmarks/online_eval.py --smoke runs end to end: a real mae-pretrain on the digits it writes, evaluated before
training and after each epoch, summarised in JSON and a table. No accuracy is asserted (two epochs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_smoke_run_writes_every_evaluation_and_its_cost(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "online"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "online_eval.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((out / "digits" / "train").glob("*/*.png"))) == 1438  # the train split only: val is the query
    summary = json.loads((out / "online_eval.json").read_text())
    (row,) = summary["rows"]
    assert row["setting"] == "digits" and row["seed"] == 0
    assert [e["epoch"] for e in row["evals"]] == [0, 1, 2]  # epoch 0: the starting weights
    assert row["evals"][0]["epoch_seconds"] is None and all(e["epoch_seconds"] > 0 for e in row["evals"][1:])
    assert all(10.0 < e["knn_top1"] <= 100.0 and e["seconds"] > 0 for e in row["evals"])  # 10 classes: above chance
    md = (out / "online_eval.md").read_text()
    assert "| after epoch | 0 | 1 | 2 |" in md and "One evaluation: median" in md
    # it never writes into a folder that holds something
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "online_eval.py"), "--smoke", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "is not empty" in again.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "online_eval.py"), "--seeds", "-1", "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "a seed must be a whole number >= 0, got '-1'" in bad.stderr
    assert not (tmp_path / "bad").exists()
