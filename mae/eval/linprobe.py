"""Linear probing (paper Sec. A.2): a linear classifier on the frozen encoder's cls token.

The head is BatchNorm1d(affine=False, eps=1e-6) + Linear (trunc-normal std 0.01, zero bias): the normalisation
without learnable parameters rescales features whose magnitudes differ a lot between models, and is equivalent to a
linear layer after training. Optimiser: LARS (momentum 0.9, trust 0.001, weight decay 0), lr = blr x batch / 256 with
blr 0.1, per-iteration warm-up then half-cycle cosine to 0; augmentation RandomResizedCrop + flip.

``cache_features`` is the fast path for small data: the features are extracted once, without augmentation, and the
same head is trained on them (the encoder is frozen, so nothing else changes).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..model import MaskedAutoEncoder
from .config import LinProbeConfig
from .data import eval_transform, load_data, probe_train_transform
from .features import pooled_features
from .lars import LARS
from .run import Run

__all__ = ["FeatureBatchNorm", "LinearProbe", "linear_probe", "probe_head"]


class FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d(affine=False) whose training statistics are those of the GLOBAL batch under DDP.

    The features come from a frozen encoder and the normalisation has no parameters, so no gradient flows through
    the statistics: they are summed across processes without autograd (gloo and nccl alike; torch's SyncBatchNorm
    needs a GPU). Running statistics follow torch's rule (momentum 0.1, unbiased variance), so evaluation and the
    state dict are BatchNorm1d's.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        if x.requires_grad:
            raise RuntimeError("FeatureBatchNorm normalises frozen features; its input must not require grad")
        with torch.no_grad():
            x64 = x.double()
            stats = torch.cat([x64.sum(0), (x64 * x64).sum(0), x64.new_tensor([x.shape[0]])])  # (2D + 1,)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(stats)
            D = x.shape[1]
            n = stats[-1]
            mean = stats[:D] / n  # (D,)
            var = (stats[D : 2 * D] / n - mean * mean).clamp_min(0)  # (D,) biased, as used to normalise
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
            self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype))
            self.num_batches_tracked += 1
        return ((x64 - mean) / (var + self.eps).sqrt()).to(x.dtype)


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    """BatchNorm1d(dim, affine=False, eps=1e-6) + Linear(dim, num_classes) with trunc-normal std 0.01 weights."""
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(FeatureBatchNorm(dim, eps=1e-6), linear)


class LinearProbe(nn.Module):
    """A frozen encoder's cls token (after its final norm) -> ``probe_head``.

    Without an encoder the module takes features (B, D) directly (the cached-features path); with one, images.
    """

    def __init__(self, dim: int, num_classes: int, encoder: MaskedAutoEncoder | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        if encoder is not None:
            encoder.requires_grad_(False)
        self.head = probe_head(dim, num_classes)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen: the encoder never changes mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.encoder is not None:
            x = pooled_features(self.encoder, x, "cls")  # (B, D), no graph through the frozen encoder
        return self.head(x)  # (B, C)


def linear_probe(
    config: LinProbeConfig, *, encoder: MaskedAutoEncoder | None = None, resume: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Run the linear probe and return its results (also written to ``<run>/results.json``).

    Args:
        config: the run; ``config.checkpoint`` or ``config.model`` names the encoder unless ``encoder`` is given.
        encoder: an in-memory ``MaskedAutoEncoder`` to probe instead.
        resume: a run folder (or its ``checkpoint.pt``) to continue.
    """
    return Run.execute(config, resume, _run, encoder)


def _run(run: Run, given: MaskedAutoEncoder | None) -> dict[str, Any]:
    cfg = run.config
    torch.manual_seed(cfg.seed)
    encoder, source = run.load_encoder(given)
    img_size = encoder.config.img_size[0]
    data = load_data(cfg.data, img_size)
    cfg = cfg.resolve(encoder.config.embed_dim, len(data.train))
    val_tf = eval_transform(img_size, cfg.crop_pct)
    data.transformed(val_tf if cfg.cache_features else probe_train_transform(img_size), val_tf)
    run.begin(cfg, data, {"encoder": source})

    encoder.eval()
    train_set, val_set = data.train, data.val
    if cfg.cache_features:
        def cls_feature(imgs: Tensor) -> Tensor:
            return pooled_features(encoder, imgs, "cls")

        train_set = TensorDataset(*(t.cpu() for t in run.extract(cls_feature, data.train, "features (train)")))
        val_set = TensorDataset(*(t.cpu() for t in run.extract(cls_feature, data.val, "features (val)")))
    torch.manual_seed(cfg.seed)
    model = LinearProbe(encoder.config.embed_dim, data.num_classes, None if cfg.cache_features else encoder)
    model.to(run.device)
    optimizer = LARS(model.head.parameters(), weight_decay=cfg.weight_decay)
    results = run.fit(model, optimizer, train_set, val_set, loss_fn=nn.functional.cross_entropy)
    return run.finish({**results, "num_classes": data.num_classes, "encoder": source,
                       "cache_features": cfg.cache_features})
