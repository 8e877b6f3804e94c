"""mae-pretrain: pretrain a Masked Autoencoder (He et al. 2021). Every flag is a field of mae.train.TrainConfig.

With no argument it runs the default: a small MAE (mae_vit_demo_patch4) on scikit-image's photographs, a few minutes
on a CPU, scored at the end on held-out photographs against a mean-colour baseline (summary.json).
Multi-GPU: ``torchrun --nproc_per_node 8 -m mae.train --data /path/to/imagenet/train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._cli import run_command
from .checkpoint import read_train_checkpoint, saved_run_config
from .config import RESUMABLE_FIELDS, TrainConfig, source_defaults
from .engine import pretrain
from .extra import MissingTrainExtraError, require_train_extra
from .resume import run_dir_of

__all__ = ["build_parser", "main"]


def _argparse_type(hint: Any) -> type:
    """The value type of a field's hint, without the ``None`` of ``int | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if args else hint
    return typing.get_origin(kind) or kind


def _help(field: dataclasses.Field) -> str:
    demo, paper = source_defaults(None, TrainConfig.model), source_defaults("data", TrainConfig.model)
    if field.name in demo:
        paper_text = "the preset's" if field.name == "patch_size" else paper[field.name]
        return (f"{field.metadata['help']} (default: {demo[field.name]} on the built-in photographs, {paper_text} "
                "with --data)")
    return f"{field.metadata['help']} (default: {field.default})"


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
        epilog="With no argument: the default run (mae_vit_demo_patch4, 64 px crops of scikit-image's photographs, "
               "CPU minutes).",
    )
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag, kind = "--" + field.name.replace("_", "-"), _argparse_type(hints[field.name])
        if kind is dict:
            parser.add_argument("--model-override", dest=field.name, action="append", type=_key_value,
                                metavar="KEY=VALUE", help=_help(field))
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=_help(field))
        else:
            parser.add_argument(flag, type=kind, choices=field.metadata.get("choices"), help=_help(field),
                                metavar=None if "choices" in field.metadata else field.name.upper())
    parser.add_argument("--resume", metavar="PATH",
                        help="continue a run: a checkpoint folder or a run folder (uses its checkpoints/last); "
                             f"only {', '.join('--' + f.replace('_', '-') for f in sorted(RESUMABLE_FIELDS))} "
                             "may be changed")
    parser.add_argument("--discard-newer", action="store_true",
                        help="with --resume from a kept checkpoint older than the run's checkpoints/last: go back to "
                             "it and let the resumed run replace the newer last (refused without this flag)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mae-pretrain`` and ``python -m mae.train``. Returns the process exit code."""
    try:  # before anything else, --help included: one line saying what to install, not a traceback
        require_train_extra("this command")
    except MissingTrainExtraError as err:
        print(f"mae-pretrain: error: {err}", file=sys.stderr)
        return 2
    args = vars(build_parser().parse_args(argv))
    resume = args.pop("resume", None)
    discard_newer = args.pop("discard_newer", False)
    if "model_overrides" in args:
        args["model_overrides"] = dict(args["model_overrides"])
    run_dir = None

    def body() -> None:
        nonlocal run_dir
        if resume is not None:
            ckpt = read_train_checkpoint(resume)
            config = TrainConfig.from_dict(saved_run_config(ckpt)).replace(
                **{"overwrite": False, "stop_after_epoch": None, **args}
            )
        else:
            ckpt, config = None, TrainConfig(**args)
        run_dir = run_dir_of(config, ckpt)
        pretrain(config, resume=ckpt, discard_newer=discard_newer)

    return run_command("mae-pretrain", body, lambda: _next_step(run_dir))


def _next_step(run_dir: Path | None) -> str:
    """How to go on after a stop: resume only where a checkpoint exists."""
    if run_dir is not None and (run_dir / "checkpoints" / "last").is_dir():
        return f"continue with --resume {run_dir} (from its last checkpoint)"
    return "no checkpoint was written, so there is nothing to resume: start again (with --overwrite if the run " \
           "folder was created)"
