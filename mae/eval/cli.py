"""The commands ``mae-knn``, ``mae-linprobe`` and ``mae-finetune``: every flag is a field of the protocol's config.

    mae-linprobe --checkpoint runs/default/checkpoints/last --data /data/imagenet     # the paper's linear probe
    mae-finetune --model mae_vit_base_patch16 --data /data/imagenet                  # from scratch
    mae-knn --checkpoint mae_pretrain_vit_base.pth                                   # built-in digits, offline
    torchrun --nproc_per_node 8 -m mae.eval.cli linprobe --checkpoint ... --data ...  # several processes
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._cli import run_command
from ..config import list_models
from .config import RESUMABLE_FIELDS, EvalConfig, FinetuneConfig, KNNConfig, LinProbeConfig
from .engine import CHECKPOINT_FILE, FEATURES_FILE, load_resume
from .finetune import finetune
from .knn import knn
from .linprobe import linear_probe

__all__ = ["build_parser", "finetune_main", "knn_main", "linprobe_main", "main"]

_HELP = {
    "checkpoint": "pretrained encoder: an official release file, a Hugging Face ViTMAE folder, a saved model folder "
                  "or a mae-pretrain checkpoint",
    "model": "a preset at random initialisation, the from-scratch baseline: " + ", ".join(list_models()),
    "data": "folder with train/<class>/<image> and val/<class>/<image>; default: scikit-learn's digits (offline)",
    "img_size": "input size (default: the checkpoint's; for --model 224, or 32 on the digits)",
    "patch_size": "patch size, with --model only (default: the preset's, or 8 on the digits)",
    "epochs": "epochs to train",
    "batch_size": "images per process per step",
    "blr": "base learning rate: lr = blr x effective batch / 256",
    "lr": "absolute learning rate (overrides --blr)",
    "num_workers": "data-loader processes (default 0 on the digits, min(8, CPU cores) with --data)",
    "device": "auto, cpu, cuda or cuda:N (under torchrun each process takes cuda:LOCAL_RANK)",
    "precision": "auto (bf16 on CUDA when supported, else fp32), fp32, bf16, or fp16 with a grad scaler",
    "seed": "random seed (data order, augmentation, new layers; the initial weights with --model)",
    "crop_pct": "evaluation: resize to img_size / crop_pct, then centre-crop img_size",
    "output_dir": "folder holding run folders",
    "name": "run folder name (default <protocol>-<data>-<encoder>)",
    "progress": "show a progress bar (on a terminal) and a line per epoch",
    "k": "neighbours that vote",
    "temperature": "votes are exp(cosine similarity / temperature)",
    "pool": "feature: cls (token after the final norm) or mean (of the patch tokens)",
    "warmup_epochs": "epochs of per-iteration linear warm-up before the cosine",
    "min_lr": "learning rate at the end of the cosine",
    "weight_decay": "weight decay (LARS: matrices only; AdamW: not on 1-D parameters, pos_embed, cls_token)",
    "accum_iter": "micro-batches per optimizer step (gradient accumulation)",
    "cache_features": "extract the features once without augmentation and train the head on them (fast)",
    "layer_decay": "layer-wise lr decay (default 0.65 for B and smaller, 0.75 for L/H, 1.0 with --model)",
    "drop_path": "stochastic depth rate (default 0.1 B, 0.2 L, 0.3 H)",
    "mixup": "mixup alpha (0: off)",
    "cutmix": "cutmix alpha (0: off)",
    "mixup_switch_prob": "probability of cutmix instead of mixup for a batch",
    "smoothing": "label smoothing",
    "reprob": "random erasing probability",
    "auto_augment": "timm RandAugment spec, or 'none'",
}

_PROTOCOLS: dict[str, tuple[type[EvalConfig], Callable[..., dict[str, Any]], str]] = {
    "knn": (KNNConfig, knn, "weighted k-NN on frozen features (k=20, T=0.07, as DINO)"),
    "linprobe": (LinProbeConfig, linear_probe, "linear probe of the frozen cls token with LARS (paper Sec. A.2)"),
    "finetune": (FinetuneConfig, finetune, "end-to-end fine-tuning with layer-wise lr decay (paper Sec. A.1)"),
}


def _arg_type(field: dataclasses.Field, default: Any):
    if field.name in ("epochs", "batch_size", "img_size", "patch_size", "num_workers"):
        return int
    if field.name in ("blr", "lr", "warmup_epochs", "min_lr", "weight_decay", "layer_decay", "drop_path"):
        return float
    return str if default is None else type(default)


def build_parser(protocol: str) -> argparse.ArgumentParser:
    """The parser of ``mae-<protocol>``; only the flags typed end up in the namespace (defaults suppressed)."""
    config_cls, _, description = _PROTOCOLS[protocol]
    parser = argparse.ArgumentParser(prog=f"mae-{protocol}", description=description,
                                     argument_default=argparse.SUPPRESS)
    for field in dataclasses.fields(config_cls):
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{_HELP[field.name]} (default: {field.default})"
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif field.name == "precision":
            parser.add_argument(flag, choices=("auto", "fp32", "bf16", "fp16"), help=help_text)
        elif field.name == "pool":
            parser.add_argument(flag, choices=("cls", "mean"), help=help_text)
        else:
            parser.add_argument(flag, type=_arg_type(field, field.default), metavar=field.name.upper(),
                                help=help_text)
    parser.add_argument("--resume", metavar="PATH", help="continue a run: its folder (or checkpoint file); only "
                        + ", ".join("--" + f.replace("_", "-") for f in sorted(RESUMABLE_FIELDS)) + " may change")
    return parser


def main(protocol: str, argv: Sequence[str] | None = None) -> int:
    """Run ``mae-<protocol>`` with ``argv``; returns the exit code (2 for bad input, with a one-line message)."""
    config_cls, run, _ = _PROTOCOLS[protocol]
    args = vars(build_parser(protocol).parse_args(argv))
    resume = args.pop("resume", None)
    run_dir: Path | None = Path(resume).expanduser() if resume is not None else None

    def body() -> None:
        nonlocal run_dir
        if resume is not None:
            saved = config_cls.from_dict(load_resume(resume)["config"])
            config = saved.replace(**args)  # the run's checks say which of the typed flags may change
        else:
            config = config_cls(**args)
            run_dir = Path(config.output_dir).expanduser() / config.run_name
        run(config, resume=resume)

    return run_command(f"mae-{protocol}", body, lambda: _next_step(run_dir))


def _next_step(run_dir: Path | None) -> str:
    """How to go on after a stop: resume only where the run saved what a resumed run needs."""
    if run_dir is not None and ((run_dir / CHECKPOINT_FILE).is_file() or (run_dir / FEATURES_FILE).is_file()):
        return f"continue with --resume {run_dir}"
    return "nothing was saved to resume from: start again"


def knn_main(argv: Sequence[str] | None = None) -> int:
    return main("knn", argv)


def linprobe_main(argv: Sequence[str] | None = None) -> int:
    return main("linprobe", argv)


def finetune_main(argv: Sequence[str] | None = None) -> int:
    return main("finetune", argv)


if __name__ == "__main__":  # torchrun -m mae.eval.cli <protocol> ...
    if len(sys.argv) < 2 or sys.argv[1] not in _PROTOCOLS:
        print(f"usage: python -m mae.eval.cli {{{','.join(_PROTOCOLS)}}} [flags]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
