"""Continued pretraining (``mae-pretrain --init PATH``): a new run that starts from the weights of a full MAE.

The model is the one the run's flags describe; the checkpoint must fit it under ``mae.io.load_checkpoint``'s rules
(every name and shape; position tables resized to the run's image size), and a misfit is refused with that load's
message before anything is written. Everything else starts fresh, as in any new run: the AdamW moments, the step
count, the warm-up and cosine schedule, the data order.

A source without a decoder (an encoder-only release file ``mae_pretrain_vit_*.pth``) is refused, because continued
pretraining from a random decoder is a different experiment; ``--init-decoder fresh`` asks for it explicitly and then
replaces any decoder the source holds with the run's freshly initialised one. A fine-tuned file (no final ``norm``)
is refused either way.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

from ..io.formats import Checkpoint, read_checkpoint
from ..io.load import is_decoder_key, load_checkpoint
from ..model import MaskedAutoEncoder
from .config import TrainConfig

__all__ = ["InitWeights", "read_init"]

_TABLES = {"pos_embed", "decoder_pos_embed"}  # fixed functions of the grid: a file may leave them out


class InitWeights(NamedTuple):
    """The checked weights a run starts from, and what ``train_config.json`` records about them."""

    checkpoint: Checkpoint
    record: dict[str, Any]  # source, format, decoder ("checkpoint" or "fresh"), the load's notes

    def load_into(self, model: MaskedAutoEncoder) -> None:
        load_checkpoint(model, self.checkpoint)


def _source(path: str | os.PathLike) -> str | os.PathLike:
    """A mae-pretrain run folder means its ``checkpoints/last``; anything else is read as it is."""
    last = Path(path) / "checkpoints" / "last"
    return last if last.is_dir() else path


def read_init(config: TrainConfig) -> InitWeights:
    """Read ``config.init`` and check it against the run's model (built on the meta device: nothing is allocated).

    Raises:
        ValueError: the weights do not fit the run's model (the load's message), the source has no decoder and
            ``config.init_decoder`` is not "fresh", or it lacks other weights (a fine-tuned file).
        FileNotFoundError: there is nothing at ``config.init``.
    """
    try:
        ckpt = read_checkpoint(_source(config.init))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--init: {err}") from None
    notes = []
    if config.init_decoder == "fresh":
        dropped = [k for k in ckpt.state_dict if is_decoder_key(k)]
        ckpt = dataclasses.replace(ckpt, state_dict={k: v for k, v in ckpt.state_dict.items() if not is_decoder_key(k)})
        notes.append(f"--init-decoder fresh: the decoder starts from scratch ({len(dropped)} decoder tensor(s) of the "
                     "file not used)")
    report = load_checkpoint(MaskedAutoEncoder.from_config(config.model_config, device="meta"), ckpt)
    if not report.decoder_loaded and config.init_decoder != "fresh":
        raise ValueError(f"--init {config.init}: this file holds no decoder (an encoder-only checkpoint such as "
                         "mae_pretrain_vit_base.pth); continued pretraining starts from a full MAE (a *_full or "
                         "mae_visualize file, a ViTMAEForPreTraining folder, a mae-pretrain run): pass "
                         "--init-decoder fresh to train a new decoder on this encoder")
    absent = [k for k in report.missing if not is_decoder_key(k) and k not in _TABLES]
    if absent:
        raise ValueError(f"--init {config.init}: the encoder is incomplete ({len(absent)} tensor(s) missing, e.g. "
                         f"{absent[0]}; a fine-tuned file carries fc_norm/head instead of norm): start from a "
                         "pretraining checkpoint")
    record = {"source": str(config.init), "format": report.format, "decoder": config.init_decoder,
              "tensors_loaded": len(report.loaded),
              "notes": notes + [n for n in report.notes if not n.startswith("the model is on the meta device")]}
    return InitWeights(ckpt, record)
