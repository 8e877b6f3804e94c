"""The run folder ``runs/<name>/``: refuse to mix two runs, and write small files atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["RUN_CONFIG_FILE", "METRICS_FILE", "check_run_dir", "prepare_run_dir", "write_json_atomic"]

RUN_CONFIG_FILE, METRICS_FILE = "train_config.json", "metrics.jsonl"
_RUN_MARKERS = (RUN_CONFIG_FILE, METRICS_FILE, "checkpoints")


def _is_run(path: Path) -> bool:
    return any((path / m).exists() for m in _RUN_MARKERS)


def check_run_dir(run_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Raise if starting here would mix with, or silently destroy, something already written."""
    if resuming or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ValueError(f"output path {str(run_dir)!r} exists and is not a directory")
    if not any(run_dir.iterdir()):
        return
    if not _is_run(run_dir):
        raise ValueError(
            f"output folder {str(run_dir)!r} is not empty and does not hold a run; pick another with --name or "
            "--output-dir (it is never deleted)"
        )
    if not overwrite:
        raise ValueError(
            f"output folder {str(run_dir)!r} already holds a run. Continue it with --resume {run_dir}, start "
            "another with --name NAME, or delete it and start afresh with --overwrite"
        )


def prepare_run_dir(run_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Create ``run_dir``; with ``overwrite`` (explicit) first delete the previous run found there."""
    check_run_dir(run_dir, resuming=resuming, overwrite=overwrite)
    if not resuming and overwrite and run_dir.is_dir() and _is_run(run_dir):
        print(f"--overwrite: deleting the previous run in {run_dir}", flush=True)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
