"""Resuming a run: which folder it continues, and what must hold before anything is written.

A resume continues the run its checkpoint belongs to, with the settings saved in the checkpoint; only the fields in
``RESUMABLE_FIELDS`` may change. The weights must be those of the model the run config describes, and a kept
checkpoint older than the run's ``last`` is resumed only when the user asks for it (``--discard-newer``).
"""

from __future__ import annotations

from pathlib import Path

from ..io.load import load_checkpoint
from ..model import MaskedAutoEncoder
from .checkpoint import MODEL_FILE, STATE_FILE, TrainCheckpoint, read_train_checkpoint, saved_run_config
from .config import RESUMABLE_FIELDS, TrainConfig

__all__ = ["check_not_older", "check_resumable", "run_dir_of"]


def run_dir_of(config: TrainConfig, ckpt: TrainCheckpoint | None) -> Path:
    """The run folder a run writes to: the resumed checkpoint's run, else ``output_dir/run_name``."""
    if ckpt is not None and ckpt.path.parent.name == "checkpoints":
        return ckpt.path.parent.parent
    return Path(config.output_dir) / config.run_name


def check_not_older(ckpt: TrainCheckpoint, run_dir: Path, *, discard_newer: bool) -> None:
    """Resuming from a kept checkpoint older than ``last`` would replace ``last``: only when the user says so."""
    last = run_dir / "checkpoints" / "last"
    if discard_newer or not (last / STATE_FILE).is_file() or last.resolve() == ckpt.path.resolve():
        return
    last_epoch = read_train_checkpoint(last).train_state.get("epoch", 0)
    if last_epoch > ckpt.train_state["epoch"]:
        raise ValueError(
            f"{str(ckpt.path)!r} (epoch {ckpt.train_state['epoch']}) is older than {str(last)!r} (epoch "
            f"{last_epoch}), which resuming from it would replace; resume from the run folder to continue the newest, "
            "or pass --discard-newer to go back and replace it"
        )


def check_resumable(config: TrainConfig, ckpt: TrainCheckpoint) -> None:
    """Refuse a resume that would change the model, the data or the optimisation, or that has nothing left to do."""
    saved = TrainConfig.from_dict(saved_run_config(ckpt))
    ignored = RESUMABLE_FIELDS | {"output_dir", "name", "overwrite"}
    changed = [(f, getattr(saved, f), getattr(config, f)) for f in saved.to_dict()
               if f not in ignored and getattr(saved, f) != getattr(config, f)]
    if changed:
        details = "; ".join(f"{f}: checkpoint {a!r}, given {b!r}" for f, a, b in changed)
        raise ValueError(
            f"cannot change these settings when resuming from {str(ckpt.path)!r}: {details}. "
            f"Only {sorted(RESUMABLE_FIELDS)} may differ"
        )
    try:  # names, shapes and dtypes, on the meta device: nothing is allocated
        load_checkpoint(MaskedAutoEncoder.from_config(config.model_config, device="meta"), ckpt.model_state,
                        strict=True)
    except ValueError as err:
        raise ValueError(
            f"cannot resume from {str(ckpt.path)!r}: its {MODEL_FILE} does not hold the weights of the model its run "
            f"config describes ({config.model}, {config.model_overrides or 'no overrides'}): {err}"
        ) from None
    done = ckpt.train_state["epoch"]
    if done >= config.epochs:
        raise ValueError(
            f"checkpoint {str(ckpt.path)!r} has already finished {done} of epochs={config.epochs}; "
            "pass a larger --epochs to train further"
        )
