"""Checkpoints that never lose work.

Layout of one checkpoint, a directory (``runs/<name>/checkpoints/last`` or ``.../epoch_0010``):

    config.json         } written by ``mae.checkpoints.save_pretrained``, so ``MaskedAutoEncoder.from_pretrained``
    model.safetensors   } loads a training checkpoint like any saved model
    train_state.pt      optimizer, grad scaler, epoch, global step, RNG states, run config;
                        loadable with ``torch.load(weights_only=True)``

A checkpoint is written into a hidden temporary directory next to its final place, every file is fsync'ed, and only
then is it swapped in by renames. A crash at any moment leaves the previous checkpoint loadable: before the swap the
old directory is untouched; between the two renames it sits at ``.old-<name>`` and ``resolve_checkpoint`` puts it
back.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..checkpoints import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "Checkpoint",
    "capture_rng_state",
    "link_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

# The model files are the library's own saved-model format; the trainer only adds its state.
CONFIG_FILE, MODEL_FILE, STATE_FILE = CONFIG_NAME, WEIGHTS_NAME, "train_state.pt"


class Checkpoint(NamedTuple):
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # works for files and (on POSIX) directories
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the complete directory ``tmp`` so that one of them is always loadable."""
    old = final.parent / f".old-{final.name}"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)  # a directory cannot be renamed onto a non-empty one: move the old one aside first
    os.replace(tmp, final)
    _fsync(final.parent)
    if old.exists():
        shutil.rmtree(old)


def _recover(final: Path) -> None:
    """Undo a crash between the two renames of ``_swap_in``: put the previous checkpoint back."""
    old = final.parent / f".old-{final.name}"
    if old.exists() and not final.exists():
        os.replace(old, final)


def _fresh_tmp(final: Path) -> Path:
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash mid-write: it never became a checkpoint
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, train_state: dict[str, Any]) -> Path:
    """Atomically write ``model`` (an unwrapped ``MaskedAutoEncoder``) and ``train_state`` to ``directory``."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    tmp = _fresh_tmp(final)
    save_pretrained(model, tmp)  # config.json + model.safetensors
    torch.save(train_state, tmp / STATE_FILE)
    for name in (CONFIG_FILE, MODEL_FILE, STATE_FILE):
        _fsync(tmp / name)
    _fsync(tmp)
    _swap_in(tmp, final)
    return final


def link_checkpoint(source: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Atomically make ``directory`` a copy of the checkpoint ``source`` (hard links where the filesystem allows:
    checkpoint files are never modified in place, so sharing them is safe and costs no space)."""
    src, final = Path(source), Path(directory)
    _recover(final)
    tmp = _fresh_tmp(final)
    for name in (CONFIG_FILE, MODEL_FILE, STATE_FILE):
        try:
            os.link(src / name, tmp / name)
        except OSError:
            shutil.copy2(src / name, tmp / name)
            _fsync(tmp / name)
    _fsync(tmp)
    _swap_in(tmp, final)
    return final


# ---------------------------------------------------------------------------------------------- reading


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by ``path``: a checkpoint directory, or a run directory (its ``last``)."""
    p = Path(path)
    for candidate in (p, p / "checkpoints" / "last"):
        _recover(candidate)
        if (candidate / STATE_FILE).is_file() or (candidate / MODEL_FILE).is_file():
            return candidate
    if not p.exists():
        raise ValueError(f"--resume {str(path)!r} does not exist; expected a checkpoint directory or a run directory")
    raise ValueError(
        f"--resume {str(path)!r} is not a checkpoint: expected a directory holding {CONFIG_FILE}, {MODEL_FILE} and "
        f"{STATE_FILE} (e.g. runs/<name>/checkpoints/last), or a run directory containing checkpoints/last"
    )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (tensors on the CPU), with errors that name the bad file.

    Nothing is unpickled beyond plain tensors and containers (``weights_only=True``).
    """
    directory = resolve_checkpoint(path)
    files = {name: directory / name for name in (CONFIG_FILE, MODEL_FILE, STATE_FILE)}
    missing = [name for name, f in files.items() if not f.is_file()]
    if missing:
        raise ValueError(f"checkpoint {str(directory)!r} is incomplete: missing {missing}")
    try:
        model_config = json.loads(files[CONFIG_FILE].read_text())
        model_config.pop("format", None)
        model_state = load_file(files[MODEL_FILE], device="cpu")
        train_state = torch.load(files[STATE_FILE], map_location="cpu", weights_only=True)
    except Exception as err:  # json, safetensors and torch each raise their own types for damaged files
        raise ValueError(
            f"checkpoint {str(directory)!r} is corrupt or unreadable: {type(err).__name__}: {err}"
        ) from err
    return Checkpoint(directory, model_state, model_config, train_state)
