"""Metrics: one JSON object per line in ``runs/<name>/metrics.jsonl``, optionally mirrored to TensorBoard.

Records carry ``"kind": "step"`` (step, epoch, loss, lr, img_per_s) or ``"kind": "epoch"`` (the epoch summary).
On resume new records are appended; ``loss_history`` keeps the latest record of each step, so a step redone after
resuming from an older checkpoint replaces the first attempt without deleting anything from the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "loss_history", "open_tensorboard", "read_metrics", "require_tensorboard"]


class MetricsLog:
    """Append-only JSONL writer (a no-op on non-main processes)."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True, tensorboard_dir: str | None = None) -> None:
        self.path, self.enabled = Path(path), enabled
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115 (closed in close())
        self._tb = None
        if enabled and tensorboard_dir is not None:
            self._tb = open_tensorboard(tensorboard_dir)

    def log(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crash keeps everything logged so far
        if self._tb is not None:
            step = record.get("step", 0)
            prefix = "train" if record.get("kind") == "step" else "epoch"
            for key, value in record.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def require_tensorboard() -> None:
    """Fail early, before any work, when TensorBoard logging is asked for but not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError as err:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'mae-pytorch[tensorboard]'"
        ) from err


def open_tensorboard(log_dir: str | os.PathLike):
    """A TensorBoard ``SummaryWriter``, imported only when asked for."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'mae-pytorch[tensorboard]'"
        ) from err
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a metrics file, skipping a last line cut short by a crash."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def loss_history(records: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """(steps, losses) of the step records, in step order, the latest record winning for a repeated step."""
    by_step = {r["step"]: r["loss"] for r in records if r.get("kind") == "step"}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]
