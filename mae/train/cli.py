"""mae-pretrain: pretrain a Masked Autoencoder (He et al. 2021). Every flag is a field of mae.train.TrainConfig.

With no argument it runs the default: a small MAE (mae_vit_demo_patch4) on scikit-image's photographs, a few minutes
on a CPU, scored at the end on held-out photographs against a mean-colour baseline (summary.json).
Multi-GPU: ``torchrun --nproc_per_node 8 -m mae.train --data /path/to/imagenet/train ...``, or the same command
under SLURM's ``srun`` (docs/cluster.md). SIGTERM or SIGUSR1 saves where the run is and exits with 143; ``--resume
auto`` with the same flags continues from there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..runtime.cli import MissingExtraError, parsed_fields, run_command
from ..runtime.cli import build_parser as config_parser
from ..runtime.preemption import Preempted
from .config import RESUMABLE_FIELDS, TrainConfig, require_train_extra
from .engine import pretrain
from .run import newest_checkpoint, read_train_checkpoint, run_dir_of, saved_run_config

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(
        TrainConfig, prog="mae-pretrain", description=__doc__.split("\n\n")[0],
        epilog="With no argument: the default run (mae_vit_demo_patch4, 64 px crops of scikit-image's photographs, "
               "CPU minutes).",
    )
    parser.add_argument("--resume", metavar="PATH",
                        help="continue a run: a checkpoint folder, a run folder (uses its checkpoints/last), or "
                             "'auto': the newest complete checkpoint of the run folder the other flags name, else "
                             "start afresh (what a requeued job runs); "
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
    except MissingExtraError as err:
        print(f"mae-pretrain: error: {err}", file=sys.stderr)
        return 2
    args = parsed_fields(build_parser().parse_args(argv))
    resume = args.pop("resume", None)
    discard_newer = args.pop("discard_newer", False)
    run_dir = None

    def body() -> None:
        nonlocal run_dir
        nonlocal discard_newer
        ckpt = None
        if resume == "auto":
            config = TrainConfig(**args)
            ckpt = newest_checkpoint(run_dir_of(config, None))
            if ckpt is None:  # no checkpoint at all: start afresh, replacing only a run of ours that saved nothing
                config = config.replace(overwrite=True)
            else:  # a kept copy is taken only when last cannot be read: it then replaces last
                discard_newer = discard_newer or ckpt.path.name != "last"
        elif resume is not None:
            ckpt = read_train_checkpoint(resume)
        if ckpt is not None:
            config = TrainConfig.from_dict(saved_run_config(ckpt)).replace(
                **{"overwrite": False, "stop_after_epoch": None, **args}
            )
        elif resume is None:
            config = TrainConfig(**args)
        run_dir = run_dir_of(config, ckpt)
        result = pretrain(config, resume=ckpt, discard_newer=discard_newer)
        if result.stopped_by is not None:
            raise Preempted(f"{result.stopped_by}: saved in {run_dir / 'checkpoints' / 'last'}; continue with "
                            f"--resume auto and the same flags (or --resume {run_dir})")

    return run_command("mae-pretrain", body, lambda: _next_step(run_dir))


def _next_step(run_dir: Path | None) -> str:
    """How to go on after a stop: resume only where a checkpoint exists."""
    if run_dir is not None and (run_dir / "checkpoints" / "last").is_dir():
        return f"continue with --resume {run_dir} (from its last checkpoint)"
    return "no checkpoint was written, so there is nothing to resume: start again (with --overwrite if the run " \
           "folder was created)"
