"""Online evaluation during pretraining (``--eval-every N``): how good the encoder is while it trains.

Before the first step of a new run (epoch 0: the starting weights, the baseline) and every N epochs after, on
rank 0 (the other processes wait):

- kNN top-1 of the current encoder on a labelled set (``--eval-data``, default scikit-learn's digits at the run's
  image size) with ``mae-knn``'s protocol (k 20, T 0.07, the evaluation crop; ``KNNConfig``) through the same
  functions (``pooled_features``, ``knn_scores``, ``topk_accuracy``), on a fixed stratified subset of at most
  ``--eval-images`` images of each split (``stratified_subset``), so an evaluation costs the same whatever the size
  of the labelled set. The feature is ``--eval-pool``: by default the mean of the patch tokens, which the
  reconstruction loss trains, rather than the cls token, which it barely reaches (docs/pretraining.md);
- the masked-patch reconstruction error and PSNR in pixel space (``report.pixel_scores``) on a fixed batch of the
  training data's kind: on the built-in photographs the held-out crops the final score uses (``heldout_batch``), with
  ``--data`` the figure views of its first images (it has no held-out split), masked with noise drawn once from
  ``HELDOUT_SEED``;
- ``<run>/online/recon_epoch_XXXX.png``: the first images of that batch reconstructed, one figure per evaluation.

It changes nothing the training sees: no gradient, the model back in train mode, the global random generators left
as they were, so a run trains the same weights with or without it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from .._checks import check_positive_int
from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..model import MaskedAutoEncoder
from ..runtime.cli import require_extra
from ..runtime.loop import autocast
from ..visualize import reconstruction_figure
from .config import TrainConfig
from .data import MaskingSpec, RunData
from .report import HELDOUT_SEED, heldout_batch, pixel_scores

try:  # the eval extra is optional for pretraining: only --eval-every needs it (require_eval_extra says so)
    from ..eval.config import KNNConfig
    from ..eval.data import eval_transform, load_data
    from ..eval.features import pooled_features
    from ..eval.knn import knn_scores, topk_accuracy
except ImportError as err:
    _EVAL_IMPORT_ERROR: ImportError | None = err
else:
    _EVAL_IMPORT_ERROR = None

__all__ = ["EVAL_EXTRA", "ONLINE_DIR", "OnlineEval", "require_eval_extra", "stratified_subset"]

EVAL_EXTRA = {"sklearn": "scikit-learn", "PIL": "pillow", "torchvision": "torchvision", "tqdm": "tqdm"}
ONLINE_DIR = "online"
_BATCH = 64  # images per forward pass of the feature extraction (on a CPU, larger batches fall out of cache)
_FIGURE_ROWS = 4  # images in each evaluation's figure: enough to watch, cheap to draw


def require_eval_extra() -> None:
    """Raise ``MissingExtraError`` naming the eval extra when ``--eval-every`` cannot run for want of a package."""
    require_extra("eval", EVAL_EXTRA, "--eval-every")
    if _EVAL_IMPORT_ERROR is not None:
        raise _EVAL_IMPORT_ERROR


class OnlineEval:
    """The labelled set, the fixed reconstruction batch and the best kNN top-1 so far, for one run.

    Args:
        config: the run (``eval_every``, ``eval_data``, ``eval_images``, ``eval_pool``, ``img_size``,
            ``num_workers``).
        data: the run's data (its figure batch is the reconstruction batch with ``--data``).
        run_dir: where ``online/`` goes.
        best: a resumed run's ``state()``.
    """

    def __init__(self, config: TrainConfig, data: RunData, run_dir: Path, best: dict[str, Any] | None = None) -> None:
        require_eval_extra()
        self.every, self.run_dir, self.pool = config.eval_every, run_dir, config.eval_pool
        self.knn = {f.name: f.default for f in dataclasses.fields(KNNConfig)}  # mae-knn's defaults
        tf = eval_transform(config.img_size, self.knn["crop_pct"])
        labelled = load_data(config.eval_data, config.img_size, tf, tf, name="--eval-data")
        self.num_classes = labelled.num_classes
        self.train, self.val = (Subset(split, stratified_subset(_labels(split), config.eval_images).tolist())
                                for split in (labelled.train, labelled.val))
        self.workers = 0 if config.eval_data is None else config.num_workers  # the digits decode in no time
        self.images, self.noise = _recon_batch(config, data)
        self.best = dict(best) if best else {"knn_top1": None, "epoch": None}

    def due(self, done: int) -> bool:
        return done % self.every == 0

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a resumed run still knows its best epoch."""
        return dict(self.best)

    @torch.inference_mode()
    def __call__(self, model: MaskedAutoEncoder, done: int, precision: str) -> dict[str, Any]:
        """Evaluate ``model`` after epoch ``done`` (0: before training); returns the metrics record (``"improved"``:
        a new best top-1)."""
        t0 = time.perf_counter()
        device = model.device
        was_training = model.training
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.eval()
            try:
                train = self._features(model, self.train, precision)
                val = self._features(model, self.val, precision)
            finally:
                model.train(was_training)
            scores = knn_scores(*train, val[0], self.num_classes, k=self.knn["k"], temperature=self.knn["temperature"])
            top1 = topk_accuracy(scores, val[1], (1,))[1]
            mse, psnr = pixel_scores(model, self.images, self.noise)
            figure = self.run_dir / ONLINE_DIR / f"recon_epoch_{done:04d}.png"
            reconstruction_figure(model, self.images[:_FIGURE_ROWS].to(device), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                  noise=self.noise[:_FIGURE_ROWS].to(device), path=figure,
                                  title=f"epoch {done}: masked-patch PSNR {psnr:.2f} dB, kNN top-1 {top1:.1f}%")
        # The starting weights (epoch 0) have no checkpoint to keep: they are the baseline, not a candidate.
        improved = done > 0 and (self.best["knn_top1"] is None or top1 > self.best["knn_top1"])
        if improved:
            self.best = {"knn_top1": top1, "epoch": done}
        return {"kind": "eval", "epoch": done, "knn_top1": top1, "knn_pool": self.pool,
                "knn_images": [len(self.train), len(self.val)], "recon_mse": mse, "recon_psnr": psnr,
                "best_knn_top1": self.best["knn_top1"], "improved": improved,
                "seconds": time.perf_counter() - t0, "figure": str(figure.relative_to(self.run_dir))}

    def _features(self, model: MaskedAutoEncoder, dataset: Dataset, precision: str) -> tuple[Tensor, Tensor]:
        """Pooled features (N, D) and labels (N,) of a labelled split, on the model's device."""
        features, labels = [], []
        for imgs, y in DataLoader(dataset, batch_size=_BATCH, num_workers=self.workers):
            with autocast(precision, model.device):
                features.append(pooled_features(model, imgs.to(model.device), self.pool).float())
            labels.append(y.to(model.device))
        return torch.cat(features), torch.cat(labels)  # (N, D), (N,)


def _recon_batch(config: TrainConfig, data: RunData) -> tuple[Tensor, Tensor]:
    """The fixed batch scored and drawn at each evaluation: normalised images (N, C, H, W) and noise (N, L)."""
    masking = MaskingSpec.of(config.model_config)
    if config.data is None:
        return heldout_batch(config.img_size, masking)
    generator = torch.Generator().manual_seed(HELDOUT_SEED)
    noise = torch.stack([masking.draw(generator) for _ in range(len(data.figure_images))])  # (N, L)
    return data.figure_images, noise


def stratified_subset(labels: Tensor, n: int, seed: int = HELDOUT_SEED) -> Tensor:
    """Sorted indices (min(n, N),) of a fixed subset of ``labels`` (N,) holding each class in proportion to its size.

    Each class's members are shuffled once (``seed``) and member r of a class of n_c is placed at (r + 1/2) / n_c:
    in that order every prefix holds each class within one image of its share, and the first n are taken. The same
    labels give the same subset in every evaluation and every run, so scores compare across epochs and runs.
    """
    check_positive_int(n, "n")
    if n >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    position = torch.empty(len(labels))  # (N,)
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        position[members] = (torch.arange(len(members)) + 0.5) / len(members)
    return position.sort(stable=True).indices[:n].sort().values  # (n,)


def _labels(split: Dataset) -> Tensor:
    """The class of every image of a labelled split (N,), read without decoding any image (``LabelledFolder`` and
    ``DigitsDataset`` both list them as ``labels``)."""
    return torch.as_tensor(split.labels)
