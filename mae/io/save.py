"""Save a model as ``config.json`` (``MAEConfig`` fields) + ``model.safetensors``: our directory format.

The trainer's checkpoints and Hugging Face exports use the same writer (``write_weights_dir``); each file is replaced
atomically, so an interrupted save leaves the previous files readable.

What a save may replace: the two files in a folder we wrote, recognised by the ``"format": "mae-pytorch"`` tag of its
``config.json``. A ``config.json`` or ``model.safetensors`` without that tag is someone else's (a download, a user's
own export) and is replaced only with ``overwrite=True``. ``config.json`` is written first, so even a first save cut
short leaves a folder recognisable as ours. Weights holding NaN or infinity are never written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from .._checks import check_bool, non_finite_names
from ..model import MaskedAutoEncoder
from .atomic import atomic_write
from .safe_read import read_json

__all__ = ["CONFIG_NAME", "FORMAT_TAG", "WEIGHTS_NAME", "save_pretrained", "write_weights_dir"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_TAG = "mae-pytorch"  # the "format" key of our config.json


def _written_by_us(path: Path) -> bool:
    """Whether ``path/config.json`` carries our format tag (anything unreadable counts as not ours)."""
    try:
        config = read_json(path / CONFIG_NAME)  # a FIFO or device is refused by its type, not waited on
    except (OSError, ValueError):
        return False
    return config.get("format") == FORMAT_TAG


def _check_replaceable(path: Path, overwrite: bool) -> None:
    present = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if os.path.lexists(path / name)]
    if present and not overwrite and not _written_by_us(path):
        raise ValueError(f"directory {str(path)!r} already holds {' and '.join(present)} that mae-pytorch did not "
                         f"write (no \"format\": \"{FORMAT_TAG}\" in its {CONFIG_NAME}); refusing to replace them: "
                         "choose another directory, or pass overwrite=True to replace them")


def write_weights_dir(directory: str | os.PathLike, config: Mapping[str, Any], tensors: Mapping[str, Tensor], *,
                      overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed; other files untouched).

    ``config.json`` gets ``"format": FORMAT_TAG`` here, whoever calls: that is how a later save recognises the folder
    as ours.

    Raises:
        ValueError: ``directory`` is a file, holds weights or a config that are not ours (unless ``overwrite``), or
            a tensor holds NaN or infinity.
    """
    from safetensors.torch import save_file

    overwrite = check_bool(overwrite, "overwrite")
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"directory {str(path)!r} exists and is a file, expected a directory")
    bad = non_finite_names(tensors)
    if bad:
        raise ValueError(f"refusing to save to {str(path)!r}: {len(bad)} tensor(s) hold NaN or infinite values "
                         f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); nothing was written")
    _check_replaceable(path, overwrite)
    # safetensors wants contiguous CPU tensors that do not share memory.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    text = json.dumps({**config, "format": FORMAT_TAG}, indent=2) + "\n"
    atomic_write(path / CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    return path


def save_pretrained(model: MaskedAutoEncoder, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save ``model`` as ``directory/config.json`` (``MAEConfig`` fields) + ``directory/model.safetensors``.

    ``mae.from_pretrained(directory)`` rebuilds it bit-exactly (float32 by default, which holds bf16/fp16 values
    exactly; pass ``dtype=`` to get the saved dtype back). A folder saved here before is updated in place; files of
    the same names that mae-pytorch did not write are replaced only with ``overwrite=True`` (module docstring).

    Returns:
        The directory, as a ``Path``.

    Raises:
        ValueError: the weights hold NaN or infinity, or the folder holds someone else's files (without
            ``overwrite``).
    """
    if not isinstance(model, MaskedAutoEncoder):
        raise TypeError(f"model must be a MaskedAutoEncoder, got {type(model).__name__}")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path (str or os.PathLike), got {directory!r} "
                        f"({type(directory).__name__})")
    return write_weights_dir(directory, model.config.to_dict(), model.state_dict(), overwrite=overwrite)
