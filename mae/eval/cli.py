"""The commands ``mae-knn``, ``mae-linprobe`` and ``mae-finetune``: every flag is a field of the protocol's config.

    mae-linprobe --checkpoint runs/default/checkpoints/last --data /data/imagenet     # the paper's linear probe
    mae-finetune --model mae_vit_base_patch16 --data /data/imagenet                  # from scratch
    mae-knn --checkpoint mae_pretrain_vit_base.pth                                   # built-in digits, offline
    torchrun --nproc_per_node 8 -m mae.eval.cli linprobe --checkpoint ... --data ...  # several processes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..runtime.cli import build_parser as config_parser
from ..runtime.cli import parsed_fields, run_command
from .config import RESUMABLE_FIELDS, EvalConfig, FinetuneConfig, KNNConfig, LinProbeConfig
from .finetune import finetune
from .knn import knn
from .linprobe import linear_probe
from .run import CHECKPOINT_FILE, FEATURES_FILE, load_resume

__all__ = ["build_parser", "finetune_main", "knn_main", "linprobe_main", "main"]

_PROTOCOLS: dict[str, tuple[type[EvalConfig], Callable[..., dict[str, Any]], str]] = {
    "knn": (KNNConfig, knn, "weighted k-NN on frozen features (k=20, T=0.07, as DINO)"),
    "linprobe": (LinProbeConfig, linear_probe, "linear probe of the frozen cls token with LARS (paper Sec. A.2)"),
    "finetune": (FinetuneConfig, finetune, "end-to-end fine-tuning with layer-wise lr decay (paper Sec. A.1)"),
}


def build_parser(protocol: str) -> argparse.ArgumentParser:
    """The parser of ``mae-<protocol>``; only the flags typed end up in the namespace (defaults suppressed)."""
    config_cls, _, description = _PROTOCOLS[protocol]
    parser = config_parser(config_cls, prog=f"mae-{protocol}", description=description)
    parser.add_argument("--resume", metavar="PATH", help="continue a run: its folder (or checkpoint file); only "
                        + ", ".join("--" + f.replace("_", "-") for f in sorted(RESUMABLE_FIELDS)) + " may change")
    return parser


def main(protocol: str, argv: Sequence[str] | None = None) -> int:
    """Run ``mae-<protocol>`` with ``argv``; returns the exit code (2 for bad input, with a one-line message)."""
    config_cls, run, _ = _PROTOCOLS[protocol]
    args = parsed_fields(build_parser(protocol).parse_args(argv))
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
