"""Save a model as ``config.json`` (``MAEConfig`` fields) + ``model.safetensors``: our directory format.

The trainer's checkpoints and Hugging Face exports use the same writer (``write_weights_dir``); each file is replaced
atomically, so an interrupted save leaves the previous files readable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..model import MaskedAutoEncoder
from .atomic import atomic_write

__all__ = ["CONFIG_NAME", "FORMAT_TAG", "WEIGHTS_NAME", "save_pretrained", "write_weights_dir"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_TAG = "mae-pytorch"  # the "format" key of our config.json


def write_weights_dir(directory: str | os.PathLike, config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed; other files untouched)."""
    from safetensors.torch import save_file

    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"directory {str(path)!r} exists and is a file, expected a directory")
    # safetensors wants contiguous CPU tensors that do not share memory.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    text = json.dumps(dict(config), indent=2) + "\n"
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write(path / CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def save_pretrained(model: MaskedAutoEncoder, directory: str | os.PathLike) -> Path:
    """Save ``model`` as ``directory/config.json`` (``MAEConfig`` fields) + ``directory/model.safetensors``.

    ``mae.from_pretrained(directory)`` rebuilds it bit-exactly (float32 by default, which holds bf16/fp16 values
    exactly; pass ``dtype=`` to get the saved dtype back).

    Returns:
        The directory, as a ``Path``.
    """
    if not isinstance(model, MaskedAutoEncoder):
        raise TypeError(f"model must be a MaskedAutoEncoder, got {type(model).__name__}")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path (str or os.PathLike), got {directory!r} "
                        f"({type(directory).__name__})")
    config = {**model.config.to_dict(), "format": FORMAT_TAG}
    return write_weights_dir(directory, config, model.state_dict())
