"""mae-pretrain: pretrain a Masked Autoencoder (He et al. 2021). Every flag is a field of mae.train.TrainConfig.

With no argument it runs the default: a ViT-Tiny MAE on scikit-image's photographs, a few minutes on a CPU.
Multi-GPU: ``torchrun --nproc_per_node 8 -m mae.train --data /path/to/imagenet/train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from ..config import list_models
from .checkpoint import load_checkpoint
from .config import DEMO_DEFAULTS, PAPER_DEFAULTS, RESUMABLE_FIELDS, TrainConfig
from .engine import NonFiniteLossError, pretrain

__all__ = ["build_parser", "main"]

_HELP = {
    "model": "model preset: " + ", ".join(list_models()),
    "img_size": "square crop size in pixels",
    "patch_size": "patch size",
    "mask_ratio": "fraction of patches removed",
    "norm_pix_loss": "reconstruct per-patch normalised pixels (the paper's best features)",
    "model_overrides": "change another model field, e.g. --model-override depth=6 (repeatable; values are JSON)",
    "data": "folder of images (flat or one subfolder per class), or tar shards (a mae-make-shards folder, .tar files, "
            "a brace pattern like 'train-{0000..0099}.tar', several joined by '::'); default: scikit-image's photos",
    "repeat": "each image appears this many times per epoch, with different crops",
    "num_workers": "data-loader processes per training process",
    "batch_size": "images per process per micro-step",
    "accum_iter": "micro-steps per optimizer step (gradient accumulation)",
    "epochs": "epochs to train in total",
    "warmup_epochs": "epochs of linear warm-up (per iteration)",
    "blr": "base learning rate; lr = blr * effective_batch / 256",
    "lr": "absolute learning rate (overrides --blr)",
    "min_lr": "floor of the cosine decay",
    "weight_decay": "AdamW weight decay (not on biases and norms)",
    "precision": "auto (bf16 on CUDA when supported, else fp32), fp32, bf16, or fp16 with a grad scaler",
    "device": "auto, cpu, cuda or cuda:N (under torchrun each process takes cuda:LOCAL_RANK)",
    "compile": "torch.compile the model",
    "threads": "torch CPU threads per process (default: torch's own setting, i.e. the cores or OMP_NUM_THREADS); "
               "1 is faster for small models on a machine busy with other jobs",
    "seed": "random seed (crops, flips, masks and initial weights)",
    "output_dir": "folder holding run folders",
    "name": "run folder name (default: 'default' for the photographs, else <data folder>-<model>)",
    "save_every": "epochs between updates of checkpoints/last (also written at the end)",
    "keep_every": "epochs between kept checkpoints checkpoints/epoch_XXXX (0: none)",
    "stop_after_epoch": "leave cleanly after this epoch (continue later with --resume)",
    "log_every": "optimizer steps between lines of metrics.jsonl",
    "progress": "show a progress bar per epoch",
    "figures": "write loss.png and reconstructions.png when the run ends",
    "tensorboard": "also log to <run>/tensorboard (pip install 'mae-pytorch[tensorboard]')",
    "overwrite": "delete a previous run in the same folder and start afresh",
}


def _type_of(field: dataclasses.Field):
    """The argparse type of a field (the annotation is a string under ``from __future__ import annotations``)."""
    default = field.default
    if field.name in ("img_size", "patch_size", "repeat", "batch_size", "epochs", "keep_every", "stop_after_epoch",
                      "threads"):
        return int
    if field.name in ("lr", "blr", "warmup_epochs"):
        return float
    if field.name == "data" or field.name == "name":
        return str
    return type(default)


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. depth=6), got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value  # a bare string


def build_parser() -> argparse.ArgumentParser:
    # Defaults are suppressed so the namespace holds only what was typed: on --resume those override the checkpoint's.
    parser = argparse.ArgumentParser(
        prog="mae-pretrain", description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS,
        epilog="With no argument: the default run (ViT-Tiny, 64 px crops of scikit-image's photographs, CPU minutes).",
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name in DEMO_DEFAULTS:
            paper = PAPER_DEFAULTS[field.name]
            paper_text = "the preset's" if paper is None else paper
            help_text = (f"{_HELP[field.name]} (default: {DEMO_DEFAULTS[field.name]} on the built-in photographs, "
                         f"{paper_text} with --data)")
        else:
            help_text = f"{_HELP[field.name]} (default: {field.default})"
        if field.name == "model_overrides":
            parser.add_argument("--model-override", dest="model_overrides", action="append", type=_key_value,
                                metavar="KEY=VALUE", help=help_text)
        elif isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif field.name == "precision":
            parser.add_argument(flag, choices=("auto", "fp32", "bf16", "fp16"), help=help_text)
        else:
            parser.add_argument(flag, type=_type_of(field), help=help_text, metavar=field.name.upper())
    parser.add_argument("--resume", metavar="PATH",
                        help="continue a run: a checkpoint folder or a run folder (uses its checkpoints/last); "
                             f"only {', '.join('--' + f.replace('_', '-') for f in sorted(RESUMABLE_FIELDS))} "
                             "may be changed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mae-pretrain`` and ``python -m mae.train``. Returns the process exit code."""
    args = vars(build_parser().parse_args(argv))
    resume = args.pop("resume", None)
    if "model_overrides" in args:
        args["model_overrides"] = dict(args["model_overrides"])
    try:
        if resume is not None:
            ckpt = load_checkpoint(resume)
            config = TrainConfig.from_dict(ckpt.train_state["run_config"]).replace(
                **{"overwrite": False, "stop_after_epoch": None, **args}
            )
        else:
            ckpt, config = None, TrainConfig(**args)
        pretrain(config, resume=ckpt)
    except (ValueError, TypeError) as err:
        print(f"mae-pretrain: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"mae-pretrain: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mae-pretrain: interrupted; continue with --resume RUN_FOLDER (from its last checkpoint)",
              file=sys.stderr)
        return 130
    return 0
