"""MAE pretraining: the paper's recipe as a Python API (``pretrain``) and a command (``mae-pretrain``).

    >>> from mae.train import TrainConfig, pretrain
    >>> result = pretrain(TrainConfig(epochs=2, name="demo"))   # scikit-image photographs, CPU friendly
    >>> result.run_dir                                           # runs/demo: config, metrics, checkpoints, figures

Training needs the ``train`` extra (``pip install 'mae-pytorch[train]'``); without it this package still imports,
and ``pretrain`` and ``mae-pretrain`` say in one line what to install.

Modules: ``config`` (the run's settings) and ``cli`` (``mae-pretrain``); ``engine`` (the run, in order); ``run`` (the
run folder, its lock, checkpoints and resume rules); ``report`` (metrics, summary, held-out score, figures);
``data/`` (the input pipeline). The loop itself is ``mae.runtime.loop``, shared with evaluation.
"""

from ..runtime.loop import lr_at_step, scaled_lr
from .config import RESUMABLE_FIELDS, TrainConfig
from .engine import NonFiniteLossError, TrainResult, build_optimizer, param_groups, pretrain
from .run import TrainCheckpoint, read_train_checkpoint, write_train_checkpoint

__all__ = [
    "NonFiniteLossError",
    "RESUMABLE_FIELDS",
    "TrainCheckpoint",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "lr_at_step",
    "param_groups",
    "pretrain",
    "read_train_checkpoint",
    "scaled_lr",
    "write_train_checkpoint",
]
