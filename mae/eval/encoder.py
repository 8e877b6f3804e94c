"""Which encoder is evaluated: a checkpoint (anything ``from_pretrained`` reads) or a preset at random init.

This module and ``finetune.py`` are the only places that reach into the rest of the library for models.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import list_models
from ..io import from_pretrained
from ..model import MaskedAutoEncoder, create_model

__all__ = ["DIGITS_MODEL_DEFAULTS", "load_encoder"]

# Without --checkpoint and without --data, a preset is built for the upscaled 8x8 digits: 32 px, patches of 8.
DIGITS_MODEL_DEFAULTS = {"img_size": 32, "patch_size": 8}


def load_encoder(
    checkpoint: str | os.PathLike | MaskedAutoEncoder | None,
    model: str | None,
    *,
    img_size: int | None = None,
    patch_size: int | None = None,
    builtin_data: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[MaskedAutoEncoder, dict[str, Any]]:
    """The encoder to evaluate and a JSON description of where it came from.

    Args:
        checkpoint: a path ``from_pretrained`` reads (release files, Hugging Face ViTMAE directories, our
            directories and trainer checkpoints) or an in-memory ``MaskedAutoEncoder``; None with ``model``.
        model: a preset name (``mae.list_models()``) for a randomly initialised encoder (from-scratch baseline).
        img_size: input size; default the checkpoint's (its position table is adapted otherwise); for a preset
            224 (32 on the built-in digits).
        patch_size: only with ``model``; default the preset's (8 on the built-in digits).
        builtin_data: the run uses the built-in digits (sets the preset defaults above).
        seed: seeds the random initialisation of a preset.

    Raises:
        ValueError: both or neither of ``checkpoint`` and ``model``; an unknown preset; ``patch_size`` with a
            checkpoint; a checkpoint that holds no encoder.
    """
    if (checkpoint is None) == (model is None):
        raise ValueError(
            "give exactly one of --checkpoint PATH (a pretrained encoder) or --model PRESET (random init, the "
            f"from-scratch baseline); got checkpoint={checkpoint!r}, model={model!r}"
        )
    if model is not None:
        if model not in list_models():
            raise ValueError(f"--model {model!r} is not a preset; valid presets: {', '.join(list_models())}")
        overrides = dict(DIGITS_MODEL_DEFAULTS) if builtin_data else {}
        overrides.update({k: v for k, v in (("img_size", img_size), ("patch_size", patch_size)) if v is not None})
        torch.manual_seed(seed)
        encoder = create_model(model, device=device, **overrides)
        return encoder, {"model": model, "init": "random", "seed": seed, **overrides}
    if patch_size is not None:
        raise ValueError(
            f"--patch-size {patch_size} was given with --checkpoint: the patch size is the checkpoint's own "
            "(it fixes the shape of the patch embedding); drop --patch-size"
        )
    if isinstance(checkpoint, MaskedAutoEncoder):
        encoder = checkpoint
        if img_size is not None and encoder.config.img_size != (img_size, img_size):
            raise ValueError(
                f"img_size {img_size} differs from the given model's {encoder.config.img_size}; pass a checkpoint "
                "path to adapt the position table, or build the model at that size"
            )
        return encoder.to(device) if device is not None else encoder, {"checkpoint": "<in-memory model>"}
    path = os.fspath(checkpoint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--checkpoint {path!r} does not exist")
    overrides = {"img_size": img_size} if img_size is not None else {}
    try:
        encoder = from_pretrained(path, device=device, **overrides)
    except ValueError as err:
        raise ValueError(f"--checkpoint {path!r} holds no usable MAE encoder: {err}") from err
    return encoder, {"checkpoint": path, **overrides}
