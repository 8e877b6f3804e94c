"""Training checkpoints that never lose work: ``write_train_checkpoint`` and ``read_train_checkpoint``.

Layout of one training checkpoint, a directory (``runs/<name>/checkpoints/last`` or ``.../epoch_0010``):

    config.json         } written by ``mae.save_pretrained``, so ``mae.from_pretrained`` loads a training
    model.safetensors   } checkpoint like any saved model
    train_state.pt      optimizer, grad scaler, epoch, global step, RNG states, run config;
                        loadable with ``torch.load(weights_only=True)``

A checkpoint is written into a temporary directory next to its final place, every file is fsync'ed, and only then is
it swapped in by renames (``mae.io.atomic_write``). A crash at any moment leaves the previous checkpoint loadable:
before the swap the old directory is untouched; between the two renames it sits at ``.<name>.old`` and is put back
the next time the checkpoint is read or written.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..io.atomic import atomic_write, recover_directory
from ..io.reading import read_json, read_weights_file
from ..io.save import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "TrainCheckpoint",
    "capture_rng_state",
    "keep_train_checkpoint",
    "read_train_checkpoint",
    "resolve_checkpoint",
    "restore_rng_state",
    "saved_run_config",
    "write_train_checkpoint",
]

# The model files are the library's own saved-model format; the trainer only adds its state.
CONFIG_FILE, MODEL_FILE, STATE_FILE = CONFIG_NAME, WEIGHTS_NAME, "train_state.pt"
_FILES = (CONFIG_FILE, MODEL_FILE, STATE_FILE)


class TrainCheckpoint(NamedTuple):
    """A training checkpoint as read back: the model's tensors and config, and the trainer's state."""

    path: Path
    model_state: dict[str, Tensor]
    model_config: dict[str, Any]
    train_state: dict[str, Any]


# ---------------------------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator (torch, CUDA, NumPy, Python), in types ``weights_only`` accepts."""
    _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global generator is what we save)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np_state = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(state["python"])


# ---------------------------------------------------------------------------------------------- writing


def write_train_checkpoint(directory: str | os.PathLike, model: nn.Module, train_state: dict[str, Any]) -> Path:
    """Atomically write ``model`` (an unwrapped ``MaskedAutoEncoder``) and ``train_state`` to ``directory``."""

    def write(tmp: Path) -> None:
        save_pretrained(model, tmp)  # config.json + model.safetensors
        torch.save(train_state, tmp / STATE_FILE)

    return atomic_write(directory, write, is_dir=True)


def keep_train_checkpoint(source: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Atomically make ``directory`` a copy of the checkpoint ``source`` (hard links where the filesystem allows:
    checkpoint files are never modified in place, so sharing them is safe and costs no space)."""
    src = Path(source)

    def write(tmp: Path) -> None:
        for name in _FILES:
            try:
                os.link(src / name, tmp / name)
            except OSError:
                shutil.copy2(src / name, tmp / name)

    return atomic_write(directory, write, is_dir=True)


# ---------------------------------------------------------------------------------------------- reading


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by ``path``: a checkpoint directory, or a run directory (its ``last``)."""
    p = Path(path)
    for candidate in (p, p / "checkpoints" / "last"):
        recover_directory(candidate)
        if (candidate / STATE_FILE).is_file() or (candidate / MODEL_FILE).is_file():
            return candidate
    if not p.exists():
        raise ValueError(f"--resume {str(path)!r} does not exist; expected a checkpoint directory or a run directory")
    raise ValueError(
        f"--resume {str(path)!r} is not a checkpoint: expected a directory holding {CONFIG_FILE}, {MODEL_FILE} and "
        f"{STATE_FILE} (e.g. runs/<name>/checkpoints/last), or a run directory containing checkpoints/last"
    )


def read_train_checkpoint(path: str | os.PathLike) -> TrainCheckpoint:
    """Read a checkpoint written by ``write_train_checkpoint`` (tensors on the CPU), with errors naming the bad file.

    Nothing is unpickled beyond plain tensors and containers (``mae.io.reading``).
    """
    directory = resolve_checkpoint(path)
    missing = [name for name in _FILES if not (directory / name).is_file()]
    if missing:
        raise ValueError(f"checkpoint {str(directory)!r} is incomplete: missing {missing}")
    try:
        model_config = read_json(directory / CONFIG_FILE)
        model_config.pop("format", None)
        model_state = read_weights_file(directory / MODEL_FILE)
        train_state = read_weights_file(directory / STATE_FILE)
    except ValueError as err:  # every reader raises ValueError (or its subclass) for damaged or unsafe files
        raise ValueError(f"checkpoint {str(directory)!r} is corrupt or unreadable: {err}") from err
    if not isinstance(train_state, dict):
        raise ValueError(f"checkpoint {str(directory)!r}: {STATE_FILE} holds a {type(train_state).__name__}, "
                         "expected the trainer's state dict")
    return TrainCheckpoint(directory, model_state, model_config, train_state)


def saved_run_config(ckpt: TrainCheckpoint) -> dict[str, Any]:
    """The run configuration stored with a training checkpoint, or a clear error when it is not there."""
    state = ckpt.train_state
    absent = [k for k in ("run_config", "epoch", "global_step", "optimizer") if k not in state]
    if absent:
        raise ValueError(
            f"checkpoint {str(ckpt.path)!r} cannot be resumed: its {STATE_FILE} lacks {absent} (found "
            f"{sorted(state)}), so it was not written by mae-pretrain. Its weights still load with mae.from_pretrained"
        )
    return state["run_config"]
