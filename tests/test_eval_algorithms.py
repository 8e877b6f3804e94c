"""The numerical pieces of mae.eval against independent references: kNN, LARS, layer-wise lr decay."""

from __future__ import annotations

import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay as timm_param_groups_layer_decay

from mae import create_model
from mae.eval import LARS, knn_scores, param_groups_layer_decay, topk_accuracy
from mae.eval.linprobe import FeatureBatchNorm

# ---------------------------------------------------------------------------------------------- kNN


def _knn_brute_force(train, labels, queries, num_classes, k, T):
    """One query at a time, with Python loops: normalise, rank all training samples, sum exp(sim / T) votes."""
    out = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    for qi, q in enumerate(queries.double()):
        q = q / q.norm()
        sims = [(float(q @ (t / t.norm())), int(y)) for t, y in zip(train.double(), labels, strict=True)]
        sims.sort(key=lambda s: -s[0])
        for sim, y in sims[:k]:
            out[qi, y] += math.exp(sim / T)
    return out


@pytest.mark.parametrize("k, T", [(20, 0.07), (3, 0.5), (100, 0.07)])
def test_knn_matches_brute_force(k, T):
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=gen) * torch.rand(60, 1, generator=gen) * 5  # different norms
    labels = torch.randint(0, 4, (60,), generator=gen)
    queries = torch.randn(25, 8, generator=gen)
    got = knn_scores(train, labels, queries, 4, k=k, temperature=T, chunk_size=7)  # several chunks
    want = _knn_brute_force(train, labels, queries, 4, min(k, 60), T)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_knn_defaults_are_dinos():
    import inspect

    params = inspect.signature(knn_scores).parameters
    assert params["k"].default == 20 and params["temperature"].default == 0.07


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    acc = topk_accuracy(scores, labels, (1, 2, 5))
    assert acc[1] == pytest.approx(25.0) and acc[2] == pytest.approx(50.0) and acc[5] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------- LARS


def _lars_by_hand(w, b, grads, lr, wd, momentum=0.9, eta=0.001):
    """The authors' LARS written out for one matrix and one bias over several steps, in float64."""
    w, b = w.double().clone(), b.double().clone()
    mw, mb = torch.zeros_like(w), torch.zeros_like(b)
    for gw, gb in grads:
        uw = gw.double() + wd * w
        ratio = eta * w.norm() / uw.norm() if w.norm() > 0 and uw.norm() > 0 else 1.0
        mw = momentum * mw + ratio * uw
        mb = momentum * mb + gb.double()  # 1-D: no weight decay, no trust ratio
        w, b = w - lr * mw, b - lr * mb
    return w, b


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_lars_matches_hand_computation(wd):
    gen = torch.Generator().manual_seed(1)
    w0, b0 = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    grads = [(torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64))
             for _ in range(3)]
    w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    opt = LARS([w, b], lr=0.7, weight_decay=wd)
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
    want_w, want_b = _lars_by_hand(w0, b0, grads, 0.7, wd)
    torch.testing.assert_close(w.detach(), want_w)
    torch.testing.assert_close(b.detach(), want_b)
    # The trust ratio is what makes the matrix step small: plain momentum SGD would move it far more.
    assert (w.detach() - w0).norm() < 0.01 * (b.detach() - b0).norm()


def test_lars_zero_weight_gets_ratio_one():
    w = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    w.grad = torch.ones(2, 2, dtype=torch.float64)
    LARS([w], lr=0.5).step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.5, dtype=torch.float64))


def test_probe_batchnorm_is_batchnorm1d_in_one_process():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 5, generator=gen) * 3 + 1
    ours, ref = FeatureBatchNorm(5), torch.nn.BatchNorm1d(5, eps=1e-6, affine=False)
    for _ in range(2):
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))
    assert not list(ours.parameters())  # no affine parameters
    with pytest.raises(RuntimeError, match="must not require grad"):
        ours.train()(x.requires_grad_())


def test_lars_rejects_negative_lr():
    with pytest.raises(ValueError, match="lr must be >= 0"):
        LARS([torch.nn.Parameter(torch.zeros(1))], lr=-1.0)


# ---------------------------------------------------------------------------------------------- layer decay


def _paper_layer_id(name: str, depth: int) -> int:
    """DESIGN.md section 5, spelled out for ViT-B's names: embeddings 0, block i -> i + 1, head side depth + 1."""
    if name in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        return 0
    if name in ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"):
        return depth + 1
    prefix, index, _ = name.split(".", 2)
    assert prefix == "blocks", name
    return int(index) + 1


def test_layer_decay_scales_of_vit_b16_follow_the_formula():
    # The fine-tuning model of ViT-B/16 (as build_finetune_model makes it: timm's ViT, average pooling + fc_norm),
    # built on the meta device: names and shapes without memory or time. (to_timm itself copies weights, which meta
    # tensors do not hold; the tiny-model tests check that it builds this same architecture.)
    cfg = create_model("mae_vit_base_patch16", device="meta").config
    vit = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
                            num_heads=cfg.num_heads, global_pool="avg", fc_norm=True, num_classes=1000,
                            drop_path_rate=0.1, device="meta")
    groups = param_groups_layer_decay(vit, weight_decay=0.05, layer_decay=0.65)
    seen = {}
    for g in groups:
        for name in g["param_names"]:
            seen[name] = (g["lr_scale"], g["weight_decay"])
    names = dict(vit.named_parameters())
    assert set(seen) == set(names), "every parameter is in exactly one group"
    assert sum(len(g["param_names"]) for g in groups) == len(names)
    assert "norm.weight" not in names  # fine-tuning drops the final norm for fc_norm
    for name, (scale, wd) in seen.items():
        assert scale == pytest.approx(0.65 ** (12 + 1 - _paper_layer_id(name, 12)), rel=1e-12), name
        no_decay = names[name].ndim == 1 or name in ("pos_embed", "cls_token")
        assert wd == (0.0 if no_decay else 0.05), name
    assert seen["head.weight"][0] == 1.0 and seen["cls_token"][0] == pytest.approx(0.65**13)
    assert seen["blocks.11.mlp.fc2.weight"][0] == pytest.approx(0.65)

    # timm's own grouping gives the same scale to every parameter with average pooling + fc_norm.
    timm_scale = {}
    for g in timm_param_groups_layer_decay(vit, weight_decay=0.05, layer_decay=0.65):
        for p in g["params"]:
            timm_scale[id(p)] = g["lr_scale"]
    for name, p in names.items():
        assert timm_scale[id(p)] == pytest.approx(seen[name][0], rel=1e-12), name
