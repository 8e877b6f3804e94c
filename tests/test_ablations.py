"""benchmarks/ablations.py --smoke runs end to end and writes what it promises. No accuracy is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ablations.py"
SMOKE_VARIANTS = ["baseline", "grid", "pixel", "random_init"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.mark.slow
def test_ablations_smoke_writes_rows_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "abl"
    proc = _run("--smoke", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads((out / "results.json").read_text())
    assert result["config"]["epochs"] == 1 and set(result["config"]["variants"]) == set(SMOKE_VARIANTS)
    assert result["config"]["variants"]["grid"] == {"masking": "grid"}
    assert result["config"]["baseline"]["mask_ratio"] == 0.75 and result["config"]["baseline"]["masking"] == "random"
    rows = result["rows"]
    assert sorted((r["variant"], r["seed"]) for r in rows) == sorted((v, s) for v in SMOKE_VARIANTS for s in (0, 1))
    for r in rows:
        assert 0.0 <= r["knn"]["acc1"] <= 100.0 and 0.0 <= r["linprobe"]["acc1"] <= 100.0
        assert "finetune" not in r  # off unless --finetune-epochs
        trained = r["variant"] != "random_init"
        assert r["pretrain"]["epochs"] == int(trained) and (r["pretrain"]["steps"] > 0) == trained
    assert result["wall_seconds"] > 0

    md = (out / "results.md").read_text()
    # the shared baseline fills the 0.75, random, normalised-pixel and depth-2 rows; ratio 0.5 and block never ran
    for row in ("| mask ratio | 0.75 |", "| masking | random 0.75 |", "| target | normalised pixel |",
                "| decoder depth | 2 |", "| masking | grid 0.75 |", "| target | pixel |",
                "| no pretraining | random init |"):
        assert row in md, row
    assert "| mask ratio | 0.5 |" not in md and "| masking | block 0.75 |" not in md
    assert (out / "ablations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.mae-tmp*"))  # atomic writes leave no temporaries

    # a second run with the same settings finds every row done and trains nothing
    again = _run("--smoke", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "seed" not in again.stdout.split("| ablation |")[0]  # no per-run progress line was printed
    assert json.loads((out / "results.json").read_text())["rows"] == rows


def test_ablations_refuses_other_settings_in_the_same_out(tmp_path):
    out = tmp_path / "abl"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"config": {"epochs": 99}, "rows": [], "wall_seconds": 0.0}))
    proc = _run("--smoke", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and "other settings" in proc.stderr
    assert json.loads((out / "results.json").read_text())["config"] == {"epochs": 99}  # left as it was
