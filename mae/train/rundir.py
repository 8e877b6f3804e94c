"""The run folder ``runs/<name>/``: refuse to mix two runs, delete only a run of ours, one process at a time.

A run folder is recognised as ours by ``train_config.json``, which carries ``"format": RUN_FORMAT``; ``--overwrite``
deletes a folder only when that marker is there AND everything inside is something the trainer writes (so files a
user put there are never deleted). While a run is going, it holds an exclusive lock on ``<run>/.lock``: a second run
with the same name stops with a clear message instead of writing into the same files.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..io.atomic import TEMP_SUFFIX, remove_temporaries, write_json
from ..io.reading import read_json

__all__ = [
    "HELDOUT_IMAGES_FILE", "METRICS_FILE", "RUN_CONFIG_FILE", "RUN_FORMAT", "SUMMARY_FILE", "RunLock", "check_run_dir",
    "prepare_run_dir", "write_run_config",
]

RUN_CONFIG_FILE, METRICS_FILE, LOCK_FILE = "train_config.json", "metrics.jsonl", ".lock"
SUMMARY_FILE, HELDOUT_IMAGES_FILE = "summary.json", "heldout_images.pt"
RUN_FORMAT = "mae-pretrain-run"
_RUN_MARKERS = (RUN_CONFIG_FILE, METRICS_FILE, "checkpoints")
# Everything the trainer writes in a run folder, and in its checkpoints folder.
_OURS = {RUN_CONFIG_FILE, METRICS_FILE, LOCK_FILE, "checkpoints", "tensorboard", "loss.png", "reconstructions.png",
         SUMMARY_FILE, HELDOUT_IMAGES_FILE}
_OUR_CHECKPOINT = re.compile(r"last|epoch_\d{4,}|\..+\.old|\..+" + re.escape(TEMP_SUFFIX))


def _is_run(path: Path) -> bool:
    return any((path / m).exists() for m in _RUN_MARKERS)


def _foreign_entries(run_dir: Path) -> list[str]:
    """What in ``run_dir`` the trainer did not write: empty for a run of ours (no marker: everything is foreign)."""
    try:
        ours = read_json(run_dir / RUN_CONFIG_FILE).get("format") == RUN_FORMAT
    except (OSError, ValueError):
        ours = False
    if not ours:
        return [f"{RUN_CONFIG_FILE} with \"format\": {RUN_FORMAT!r} (the mark of a mae-pretrain run) is missing"]
    foreign = [p.name for p in run_dir.iterdir() if p.name not in _OURS and not p.name.endswith(TEMP_SUFFIX)]
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        foreign += [f"checkpoints/{p.name}" for p in checkpoints.iterdir() if not _OUR_CHECKPOINT.fullmatch(p.name)]
    return sorted(foreign)


def check_run_dir(run_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Raise if starting here would mix with, or silently destroy, something already written."""
    if resuming or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ValueError(f"output path {str(run_dir)!r} exists and is not a directory")
    if not [p for p in run_dir.iterdir() if p.name != LOCK_FILE]:
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
    foreign = _foreign_entries(run_dir)
    if foreign:
        raise ValueError(
            f"--overwrite refused: {str(run_dir)!r} is not only a run of mae-pretrain ({'; '.join(foreign)}), "
            "so it is not deleted; pick another folder with --name or --output-dir, or empty it yourself"
        )


def prepare_run_dir(run_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Make ``run_dir`` ready, under the caller's ``RunLock``: with ``overwrite`` (explicit) first delete the
    previous run of ours found there; remove temporaries a killed run left behind."""
    check_run_dir(run_dir, resuming=resuming, overwrite=overwrite)
    if not resuming and overwrite and run_dir.is_dir() and _is_run(run_dir):
        print(f"--overwrite: deleting the previous run in {run_dir}", flush=True)
        for entry in run_dir.iterdir():
            if entry.name != LOCK_FILE:  # the lock file stays: the caller holds it
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(run_dir)
    remove_temporaries(run_dir / "checkpoints")


def write_run_config(run_dir: Path, resolved: dict[str, Any]) -> Path:
    """Write ``train_config.json`` (the run's config and resolved values), marked as a run of ours."""
    return write_json(run_dir / RUN_CONFIG_FILE, {"format": RUN_FORMAT, **resolved})


class RunLock:
    """An exclusive lock on ``<run_dir>/.lock`` for the duration of a run (released by the OS if the process dies)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"another mae-pretrain process is running in {str(self.run_dir)!r} (it holds {LOCK_FILE}); wait for "
                "it to finish or pick another --name"
            ) from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
