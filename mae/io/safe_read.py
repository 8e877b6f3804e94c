"""Safe reading of weight files: nothing pickled is ever executed, and the format comes from the bytes, not the name.

* safetensors (a little-endian u64 header length, then a JSON header): read by ``safetensors``, which cannot run code;
* ``torch.save`` files, zip archives (``PK\\x03\\x04``) or legacy pickles (``\\x80``): read by
  ``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers. The one extra class allowed is
  ``argparse.Namespace``, the ``'args'`` entry of the MAE release's training checkpoints; it only holds attributes.

A file that would need anything more is refused with ``UnsafeCheckpointError``: we never pass on torch's advice to
retry with ``weights_only=False``, which would run whatever code the file carries.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Literal

import torch

from .._checks import check_regular_file

__all__ = ["UnsafeCheckpointError", "detect_format", "read_json", "read_weights_file"]

FileFormat = Literal["safetensors", "torch-zip", "torch-pickle"]
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # every pickle of protocol 2 or later starts with the PROTO opcode


class UnsafeCheckpointError(ValueError):
    """A pickled file needs Python objects that ``torch.load(weights_only=True)`` will not build (could run code)."""


def detect_format(path: str | os.PathLike) -> FileFormat:
    """Which reader a file needs, decided by its first bytes.

    Raises:
        ValueError: the bytes are none of the three formats (text, an empty file, an image, ...), or the path is a
            FIFO, device or socket.
    """
    path = Path(path)
    check_regular_file(path, "checkpoint")  # a FIFO would wait for a writer forever
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") >= 2:
        return "safetensors"  # the header length, then the opening brace of its JSON header
    if head[:1] == bytes([_PICKLE_PROTO]):
        return "torch-pickle"
    raise ValueError(
        f"{path} is not a model checkpoint: its first bytes {head!r} start neither a safetensors header nor a "
        "torch.save file (zip archive or pickle)"
    )


def read_weights_file(path: str | os.PathLike) -> Any:
    """The object stored in ``path`` (a dict of tensors for safetensors), read without ever running pickled code.

    Raises:
        UnsafeCheckpointError: a pickle that references classes or functions beyond tensors and containers.
        ValueError: an unknown, truncated or corrupt file.
    """
    path = Path(path)
    if detect_format(path) == "safetensors":
        return _read_safetensors(path)
    try:
        # argparse.Namespace is the release code's saved 'args'; rebuilding it only sets attributes.
        # An open file, not the path: torch.load would otherwise pick a reader from the name's extension.
        with torch.serialization.safe_globals([argparse.Namespace]), open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or re.search(r"GLOBAL ([\w.]+)", str(err)):
            raise UnsafeCheckpointError(_unsafe_message(path, str(err))) from None
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err}") from None
    except Exception as err:  # garbage makes the unpickler fail in many ways (EOFError, KeyError, IndexError, ...)
        if "weights_only" in str(err):
            raise UnsafeCheckpointError(_unsafe_message(path, str(err))) from None
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from None


def _unsafe_message(path: Path, torch_message: str) -> str:
    blocked = re.search(r"GLOBAL ([\w.]+)", torch_message)
    what = f"a pickled reference to {blocked.group(1)!r}" if blocked else "pickled Python objects"
    return (
        f"refused to load {path}: it holds {what}, which is not a tensor or plain container; unpickling it could "
        "run arbitrary code, so the file is refused. mae-pytorch reads pickled files with "
        "torch.load(weights_only=True) only. If you trust the file, re-save just its state dict "
        "(torch.save(obj['model'], ...)) or convert it to safetensors."
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``, with errors that name the file."""
    path = Path(path)
    check_regular_file(path, "file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj
