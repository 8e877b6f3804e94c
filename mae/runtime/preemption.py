"""Leaving cleanly when the cluster asks: SIGTERM (preemption, ``scancel``, a time limit) or SIGUSR1 (SLURM's warning
``--signal=USR1@120``).

``StopSignals`` only records that a signal came; the training loop reads ``requested`` at every optimizer step and
sums it over the processes together with the step's loss (no extra collective), so every process stops after the
same step even when only one of them was signalled. The run then saves a checkpoint and the command exits with
``PREEMPTED_EXIT``. Handlers are idempotent: a second signal while the checkpoint is written changes nothing (the
write is atomic anyway), and the previous handlers come back when the run ends.

Under SLURM, ``request_requeue`` asks SLURM to put the job back in the queue (``scontrol requeue``), only when the job
was submitted requeueable (``scontrol show job`` says ``Requeue=1``); the requeued job starts the same script, whose
``--resume auto`` continues from the checkpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from types import FrameType

__all__ = ["PREEMPTED_EXIT", "STOP_SIGNALS", "Preempted", "StopSignals", "ignore_stop_signals", "request_requeue"]

PREEMPTED_EXIT = 143  # 128 + SIGTERM, the shell's code for a process ended by SIGTERM, for either signal
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):  # noqa: N818 (a stop the user asked for, not an error)
    """The run stopped on a signal after saving a checkpoint; the command exits with ``PREEMPTED_EXIT``."""


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """A data-loader worker's ``worker_init_fn``: the stop signals are the main process's to act on.

    ``scancel``, a time limit or preemption send SIGTERM to every process of the job step, data-loader workers
    included, and torch's workers die of it; the main process would then fail with "DataLoader worker exited
    unexpectedly" in the middle of a step instead of saving. Workers still end when the main process shuts them down
    or exits (they watch it).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopSignals:
    """Record SIGTERM and SIGUSR1 while the ``with`` block runs (main thread only; elsewhere nothing is installed)."""

    def __init__(self) -> None:
        self.received: str | None = None  # the name of the first signal
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:  # idempotent: later signals change nothing
            self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def request_requeue(env: dict[str, str] | None = None) -> str | None:
    """Under SLURM, requeue this job if it was submitted requeueable. Returns one line saying what happened (None
    outside SLURM)."""
    env = dict(os.environ) if env is None else env
    job = env.get("SLURM_JOB_ID")
    if job is None:
        return None
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        return f"SLURM job {job}: scontrol is not on PATH, so the job was not requeued; resubmit it (--resume auto)"
    shown = subprocess.run([scontrol, "show", "job", job], capture_output=True, text=True, check=False)
    if "Requeue=1" not in shown.stdout.split():
        return f"SLURM job {job} was not submitted requeueable (sbatch --requeue): resubmit it (--resume auto)"
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"SLURM job {job}: scontrol requeue failed ({(done.stderr or done.stdout).strip()}); resubmit it"
    return f"SLURM job {job} requeued: it continues from this checkpoint when it starts again"
