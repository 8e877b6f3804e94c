"""Find the weights in a source and rename them to our keys: ``read_checkpoint`` -> ``Checkpoint``.

Recognised, from the contents, never from the names:

* our directories (``save_pretrained``, the training CLI's checkpoints): ``config.json`` (``MAEConfig`` fields) +
  ``model.safetensors``; other files there (``train_state.pt``) are ignored;
* the official release files, ``torch.save({'model': state_dict, ...})``: encoder-only (``mae_pretrain_vit_*``),
  full (``mae_visualize_vit_*``, ``*_full``), and fine-tuned ones (``fc_norm``/``head`` instead of ``norm``);
* Hugging Face ViTMAE directories (``config.json`` with model_type "vit_mae" + ``model.safetensors`` or
  ``pytorch_model.bin``) and bare HF state dicts, ``ViTMAEForPreTraining`` or ``ViTMAEModel``;
* any plain state dict with our keys (a safetensors or ``torch.save`` file, or an in-memory mapping).

Safetensors is preferred whenever a directory holds both kinds of weights file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import MAEConfig
from .hf import config_from_hf, hf_to_mae_state_dict, is_hf_state_dict
from .safe_read import read_json, read_weights_file
from .save import CONFIG_NAME, FORMAT_TAG, WEIGHTS_NAME

__all__ = ["Checkpoint", "read_checkpoint"]

_PICKLED_WEIGHTS = ("pytorch_model.bin", "model.pth", "model.pt")
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers


@dataclass
class Checkpoint:
    """Weights read from somewhere, renamed to our (official) keys, plus what is known about them."""

    state_dict: dict[str, Tensor]
    format: str  # "mae-pytorch" | "official" | "hf-vitmae" | "state-dict"
    source: str
    config: dict[str, Any] | None = None  # MAEConfig fields, when the source has a config file
    skipped: list[str] = field(default_factory=list)  # source keys with no counterpart here
    notes: list[str] = field(default_factory=list)


def read_checkpoint(source: str | os.PathLike | Mapping[str, Any]) -> Checkpoint:
    """Read weights from a file, a directory, or an in-memory (state) dict, without building a model.

    Args:
        source: see the module docstring for the layouts recognised.

    Returns:
        A ``Checkpoint`` whose ``state_dict`` uses our keys (HF files are converted).

    Raises:
        FileNotFoundError: the path does not exist, or a directory holds no weights file.
        UnsafeCheckpointError: a pickled file that could run code.
        ValueError: a truncated or non-checkpoint file, or a config that describes something else.
    """
    if isinstance(source, Mapping):
        return _from_object(dict(source), "<state dict>", config=None)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a state dict, got {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        return _read_directory(path)
    return _from_object(read_weights_file(path), str(path), config=None)


def _read_directory(path: Path) -> Checkpoint:
    config = read_json(path / CONFIG_NAME) if (path / CONFIG_NAME).is_file() else None
    # Safetensors first: it cannot carry code, and it is what we and Hugging Face write.
    for name in (WEIGHTS_NAME, *_PICKLED_WEIGHTS):
        if (path / name).is_file():
            return _from_object(read_weights_file(path / name), str(path), config=config)
    if (path / f"{WEIGHTS_NAME}.index.json").is_file():
        raise ValueError(f"{path} holds a sharded checkpoint (model.safetensors.index.json), which is not supported")
    raise FileNotFoundError(
        f"directory {str(path)!r} has no weights file; expected one of {[WEIGHTS_NAME, *_PICKLED_WEIGHTS]}"
    )


def _state_dict_of(obj: Any, source: str) -> tuple[dict[str, Tensor], str]:
    """The state dict inside a loaded object, and the layout it came in."""
    fmt = "state-dict"
    if isinstance(obj, dict) and isinstance(obj.get("model"), Mapping):
        obj, fmt = obj["model"], "official"  # the release layout: {'model': state_dict, 'optimizer': ..., ...}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{source} is not a model checkpoint: expected a state dict of tensors, found {what}")
    return dict(obj), fmt


def _from_object(obj: Any, source: str, config: dict[str, Any] | None) -> Checkpoint:
    """Find the state dict inside a loaded object and rename it to our keys."""
    state_dict, fmt = _state_dict_of(obj, source)
    notes: list[str] = []
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
            notes.append(f"removed the {prefix!r} prefix from every key")

    skipped: list[str] = []
    model_config = None
    if config is not None and "model_type" in config:
        model_config, hf_notes = config_from_hf(config)
        notes += hf_notes
        fmt = "hf-vitmae"
    elif config is not None:
        fields = {f.name for f in dataclasses.fields(MAEConfig)}
        if config.get("format", FORMAT_TAG) != FORMAT_TAG or not {"embed_dim", "depth"} <= set(config):
            raise ValueError(
                f"{source}/{CONFIG_NAME} is neither a mae-pytorch config (MAEConfig fields) nor a Hugging Face "
                f"ViTMAE config (model_type 'vit_mae'); keys found: {sorted(config)}"
            )
        model_config = {k: v for k, v in config.items() if k in fields}  # unknown keys ("format", ...) ignored
        fmt = FORMAT_TAG
    if is_hf_state_dict(state_dict):
        state_dict, skipped = hf_to_mae_state_dict(state_dict)
        fmt = "hf-vitmae"
    return Checkpoint(state_dict, fmt, source, model_config, skipped, notes)
