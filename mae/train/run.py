"""The run folder ``runs/<name>/``: its lock, its checkpoints, and the rules of resuming. Nothing written is lost.

Run folder. Recognised as ours by ``train_config.json``, which carries ``"format": RUN_FORMAT``. ``--overwrite``
deletes a folder only when that marker is there AND everything inside is something the trainer writes, so files a user
put there are never deleted. While a run is going it holds an exclusive lock on ``<run>/.lock``: a second run with the
same name stops with a clear message instead of writing into the same files.

Checkpoints. One training checkpoint is a directory (``checkpoints/last`` or a kept ``checkpoints/epoch_0010``):

    config.json         } written by ``mae.save_pretrained``, so ``mae.from_pretrained`` loads a training
    model.safetensors   } checkpoint like any saved model
    train_state.pt      optimizer, grad scaler, epoch, global step, RNG states, run config, world size, and after a
                        stop signal the ``position`` in the epoch (samples of its global order used, steps and loss
                        sum so far); loadable with ``torch.load(weights_only=True)``

It is written into a temporary directory next to its final place, every file fsync'ed, and swapped in by renames
(``mae.io.atomic_write``): a crash at any moment leaves the previous checkpoint loadable.

Resuming. A resume continues the run its checkpoint belongs to, with the settings saved in the checkpoint; only the
fields in ``RESUMABLE_FIELDS`` may change. The weights must be those of the model the run config describes, and a
kept checkpoint older than the run's ``last`` is resumed only when the user asks (``--discard-newer``).
``--resume auto`` (``newest_checkpoint``) takes the run's ``last`` (the newest kept copy when ``last`` cannot be
read), or starts afresh when the run has no checkpoint at all: the command a requeued job runs again.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..io.atomic import TEMP_SUFFIX, atomic_write, recover_directory, remove_temporaries, write_json
from ..io.load import load_checkpoint
from ..io.safe_read import read_json, read_weights_file
from ..io.save import CONFIG_NAME, WEIGHTS_NAME, save_pretrained
from ..model import MaskedAutoEncoder
from ..runtime.run_folder import LOCK_FILE
from .config import RESUMABLE_FIELDS, TrainConfig

__all__ = [
    "CONFIG_FILE", "HELDOUT_IMAGES_FILE", "METRICS_FILE", "MODEL_FILE", "RUN_CONFIG_FILE", "RUN_FORMAT", "STATE_FILE",
    "SUMMARY_FILE", "TrainCheckpoint", "capture_rng_state", "check_not_older", "check_resumable",
    "check_run_dir", "keep_train_checkpoint", "newest_checkpoint", "prepare_run_dir", "read_train_checkpoint",
    "resolve_checkpoint", "restore_rng_state", "run_dir_of", "saved_run_config", "write_run_config",
    "write_train_checkpoint",
]

# ---------------------------------------------------------------------------------------------- the run folder

RUN_CONFIG_FILE, METRICS_FILE = "train_config.json", "metrics.jsonl"
SUMMARY_FILE, HELDOUT_IMAGES_FILE = "summary.json", "heldout_images.pt"
RUN_FORMAT = "mae-pretrain-run"
_RUN_MARKERS = (RUN_CONFIG_FILE, METRICS_FILE, "checkpoints")
# Everything the trainer writes in a run folder, and in its checkpoints folder.
_OURS = {RUN_CONFIG_FILE, METRICS_FILE, LOCK_FILE, "checkpoints", "tensorboard", "loss.png", "reconstructions.png",
         SUMMARY_FILE, HELDOUT_IMAGES_FILE, "online"}
_OUR_CHECKPOINT = re.compile(r"last|best|epoch_\d{4,}|\..+\.old|\..+" + re.escape(TEMP_SUFFIX))
_OUR_FIGURE = re.compile(r"recon_epoch_\d{4,}\.png|\..+" + re.escape(TEMP_SUFFIX))  # in online/


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
    online = run_dir / "online"
    if online.is_dir():
        foreign += [f"online/{p.name}" for p in online.iterdir() if not _OUR_FIGURE.fullmatch(p.name)]
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


# ---------------------------------------------------------------------------------------------- checkpoints

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

    Nothing is unpickled beyond plain tensors and containers (``mae.io.safe_read``).
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


# ---------------------------------------------------------------------------------------------- resuming

def _progress(state: dict[str, Any]) -> tuple[int, int]:
    """How far a checkpoint got: (epochs done, samples of the next epoch used)."""
    return state.get("epoch", 0), state.get("position", {}).get("samples", 0)


def newest_checkpoint(run_dir: Path) -> TrainCheckpoint | None:
    """Where ``--resume auto`` continues: ``checkpoints/last``, or when it cannot be read the kept copy
    (``epoch_XXXX``) with the highest number that can; None when the run has no checkpoint at all.

    ``last`` comes first even where a kept copy got further: that copy is then a branch the user left with
    ``--discard-newer``, and continuing it would throw away the branch they chose.

    Raises:
        ValueError: the run has checkpoints but none of them can be read (nothing is started over them).
    """
    checkpoints = run_dir / "checkpoints"
    candidates = [checkpoints / "last", *sorted(checkpoints.glob("epoch_*"), reverse=True)]
    present = [c for c in candidates if c.exists()]
    problems = []
    for candidate in present:
        try:
            ckpt = read_train_checkpoint(candidate)
            saved_run_config(ckpt)
        except (ValueError, FileNotFoundError) as err:  # incomplete or damaged: try the next one
            problems.append(f"{candidate.name}: {err}")
            continue
        return ckpt
    if present:
        raise ValueError(f"--resume auto: none of the checkpoints of {str(run_dir)!r} can be read, and starting "
                         f"afresh would replace them ({'; '.join(problems)[:600]}); resume one by path once mended, "
                         "or pass another --name")
    return None


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
    last_state = read_train_checkpoint(last).train_state
    if _progress(last_state) > _progress(ckpt.train_state):
        raise ValueError(
            f"{str(ckpt.path)!r} ({_where(ckpt.train_state)}) is older than {str(last)!r} ({_where(last_state)}), "
            "which resuming from it would replace; resume from the run folder to continue the newest, or pass "
            "--discard-newer to go back and replace it"
        )


def _where(state: dict[str, Any]) -> str:
    """How far a checkpoint got, in words: 'epoch 5', or 'epoch 5 + 320 samples' for a stop inside an epoch."""
    epoch, samples = _progress(state)
    return f"epoch {epoch}" + (f" + {samples} samples" if samples else "")


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
