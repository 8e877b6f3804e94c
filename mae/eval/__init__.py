"""Downstream evaluation of MAE encoders with the paper's protocols: kNN, linear probing, fine-tuning.

    >>> from mae.eval import LinProbeConfig, linear_probe
    >>> results = linear_probe(LinProbeConfig(checkpoint="runs/default/checkpoints/last"))
    >>> results["val_acc1"]

Each protocol is a function of its config (``knn``, ``linear_probe``, ``finetune``) and a command (``mae-knn``,
``mae-linprobe``, ``mae-finetune``). Without ``data`` they run on scikit-learn's digits, offline. Feature extraction
(pooled features, intermediate layers, attention maps) lives in ``mae.eval.features``.
"""

from ..runtime.cli import require_extra

# The eval extra: image folders (torchvision, Pillow), progress bars (tqdm); the digits need scikit-learn. Checked
# before the protocols are imported, so a missing package is one line naming the extra.
require_extra("eval", {"PIL": "pillow", "torchvision": "torchvision", "tqdm": "tqdm"}, "mae.eval")

# ruff: noqa: E402

from .config import EvalConfig, FinetuneConfig, KNNConfig, LinProbeConfig
from .features import attention_maps, cls_attention, intermediate_layers, pool_tokens, pooled_features
from .finetune import build_finetune_model, finetune, layer_id, param_groups_layer_decay
from .knn import knn, knn_scores, topk_accuracy
from .lars import LARS
from .linprobe import LinearProbe, linear_probe, probe_head

__all__ = [
    "EvalConfig",
    "FinetuneConfig",
    "KNNConfig",
    "LARS",
    "LinProbeConfig",
    "LinearProbe",
    "attention_maps",
    "build_finetune_model",
    "cls_attention",
    "finetune",
    "intermediate_layers",
    "knn",
    "knn_scores",
    "layer_id",
    "linear_probe",
    "param_groups_layer_decay",
    "pool_tokens",
    "pooled_features",
    "probe_head",
    "topk_accuracy",
]
