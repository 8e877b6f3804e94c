"""What every command's run folder ``<output_dir>/<name>/`` shares: a plain name, and one process at a time.

While a run is going it holds an exclusive lock on ``<run>/.lock`` (released by the OS if the process dies), so a
second run with the same name stops with a clear message instead of writing into the same files. The rules of what
each command writes there, recognises as its own and may replace live with the command (``mae.train.run``,
``mae.eval.run``).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "RunLock", "check_run_name"]

LOCK_FILE = ".lock"


def check_run_name(name: Any, what: str = "name") -> Any:
    """None or a plain folder name: a run writes inside ``--output-dir`` only, never through a path in ``--name``."""
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"{what} must be a plain folder name (no '/', '\\\\', '.' or '..'), got {name!r}; choose "
                         "the parent folder with --output-dir")
    return name


class RunLock:
    """An exclusive lock on ``<run_dir>/.lock`` for the duration of a run (``prog`` names the command holding it)."""

    def __init__(self, run_dir: str | os.PathLike, prog: str) -> None:
        self.run_dir, self.prog = Path(run_dir), prog
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"another {self.prog} process is running in {str(self.run_dir)!r} (it holds {LOCK_FILE}); wait for "
                "it to finish or pick another --name"
            ) from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
