"""Weighted k-nearest-neighbour classification on frozen features (DINO's protocol, Caron et al. 2021).

Features are L2-normalised, similarity is the cosine, and each of the k nearest training samples votes for its class
with weight exp(sim / T). k = 20 and T = 0.07 are DINO's values. MAE features are weak under kNN (docs/evaluation.md:
11.2% top-1 for ViT-B after 100 ImageNet epochs): use it as a fast check, not as the headline number.

Shape legend: N training samples, Q queries, D feature width, C classes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import MaskedAutoEncoder
from .config import KNNConfig
from .data import eval_transform, load_data
from .features import pooled_features
from .run import FEATURES_FILE, Run

__all__ = ["knn", "knn_scores", "topk_accuracy"]


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores (Q, C) of each query: the summed votes exp(sim / T) of its k most similar training samples.

    Args:
        train_features: (N, D), any scale (normalised here).
        train_labels: (N,) integer classes in [0, num_classes).
        query_features: (Q, D).
        k: neighbours per query (at most N are used).
        temperature: T of the votes.
        chunk_size: queries per similarity matrix, bounding memory at chunk_size x N.
    """
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (Q, D) with the same D, got {tuple(train_features.shape)} and "
            f"{tuple(query_features.shape)}"
        )
    if train_labels.shape != train_features.shape[:1]:
        raise ValueError(f"train_labels must be ({train_features.shape[0]},), got {tuple(train_labels.shape)}")
    if k <= 0 or temperature <= 0:
        raise ValueError(f"k and temperature must be positive, got k={k!r}, temperature={temperature!r}")
    train = F.normalize(train_features.float(), dim=1)  # (N, D)
    queries = F.normalize(query_features.float(), dim=1)  # (Q, D)
    labels = train_labels.long()
    k = min(k, train.shape[0])
    scores = torch.zeros(queries.shape[0], num_classes, device=queries.device)  # (Q, C)
    for start in range(0, queries.shape[0], chunk_size):
        sim = queries[start : start + chunk_size] @ train.T  # (q, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # (q, k)
        votes = (top_sim / temperature).exp()  # (q, k)
        scores[start : start + chunk_size].scatter_add_(1, labels[top_idx], votes)  # (q, C)
    return scores


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Percentage of rows whose label is among the ``k`` highest scores, for each k (k > C counts as C)."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (Q, kmax)
    hit = ranked == labels.view(-1, 1)  # (Q, kmax)
    return {k: 100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def knn(
    config: KNNConfig, *, encoder: MaskedAutoEncoder | None = None, resume: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Run the kNN protocol and return its results (also written to ``<run>/results.json``).

    Train and val features are extracted with the evaluation transform (each process its share, gathered), saved to
    ``<run>/features.pt``, and every query is classified by ``knn_scores``. ``resume`` (a run folder) reuses them.
    """
    return Run.execute(config, resume, _run, encoder)


def _run(run: Run, given: MaskedAutoEncoder | None) -> dict[str, Any]:
    cfg = run.config
    encoder, source = run.load_encoder(given)
    img_size = encoder.config.img_size[0]
    data = load_data(cfg.data, img_size)
    cfg = cfg.resolve(encoder.config.embed_dim, len(data.train))
    if cfg.k > len(data.train):
        raise ValueError(f"k={cfg.k} neighbours cannot be found among the {len(data.train)} training images; pass "
                         f"--k {len(data.train)} or fewer")
    tf = eval_transform(img_size, cfg.crop_pct)
    data.transformed(tf, tf)
    run.begin(cfg, data, {"encoder": source})
    cached = run.resumed.get("features") if run.resumed is not None else None
    if cached is None:
        encoder.eval()

        def feature(imgs: Tensor) -> Tensor:
            return pooled_features(encoder, imgs, cfg.pool)

        train_x, train_y = run.extract(feature, data.train, "features (train)")
        val_x, val_y = run.extract(feature, data.val, "features (val)")
        cached = {"train": train_x.cpu(), "train_labels": train_y.cpu(), "val": val_x.cpu(),
                  "val_labels": val_y.cpu()}
        run.save(FEATURES_FILE, {"features": cached})
    on = {k: v.to(run.device) for k, v in cached.items()}  # the similarity matrices are the big work: on the device
    scores = knn_scores(on["train"], on["train_labels"], on["val"], data.num_classes, k=cfg.k,
                        temperature=cfg.temperature)
    acc = topk_accuracy(scores, on["val_labels"], (1, 5))
    results = {"val_acc1": acc[1], **({"val_acc5": acc[5]} if data.num_classes >= 5 else {}),
               "k": cfg.k, "temperature": cfg.temperature, "pool": cfg.pool, "num_classes": data.num_classes,
               "encoder": source}
    run.log({"kind": "knn", **results})
    return run.finish(results)
