"""The algorithm's pure functions against independent, hand-written definitions.

Each reference here is written from DESIGN.md in the plainest form (Python loops, the ``math`` and ``statistics``
modules), never as a vectorised copy of ``mae.functional``, so a shared mistake cannot hide.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mae import masked_mse_loss, patchify, random_masking, sincos_pos_embed_2d, unpatchify

# ---------------------------------------------------------------------------------------------------- patchify


@pytest.mark.parametrize(
    ("C", "H", "W", "ph", "pw"),
    [(3, 8, 8, 4, 4), (1, 6, 9, 2, 3), (4, 8, 12, 4, 2), (2, 4, 4, 4, 4)],
)
def test_patchify_order_is_row_col_channel(C, H, W, ph, pw):
    B = 2
    imgs = torch.arange(B * C * H * W, dtype=torch.float32).reshape(B, C, H, W)  # every pixel distinct
    patch = (ph, pw) if ph != pw else ph
    out = patchify(imgs, patch)
    gh, gw = H // ph, W // pw
    assert out.shape == (B, gh * gw, ph * pw * C)
    for b in range(B):
        for gi in range(gh):
            for gj in range(gw):
                l = gi * gw + gj  # row-major over the grid
                for r in range(ph):
                    for c in range(pw):
                        for ch in range(C):
                            k = (r * pw + c) * C + ch  # (row inside patch, column inside patch, channel)
                            assert out[b, l, k] == imgs[b, ch, gi * ph + r, gj * pw + c]


@pytest.mark.parametrize(("C", "H", "W", "patch"), [(3, 32, 32, 8), (1, 32, 48, 8), (4, 16, 24, (8, 4))])
def test_unpatchify_inverts_patchify(C, H, W, patch):
    imgs = torch.randn(2, C, H, W)
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    x = patchify(imgs, patch)
    assert torch.equal(unpatchify(x, patch, (H // ph, W // pw), C), imgs)
    # And the other way round: any patch tensor survives the round trip.
    x2 = torch.randn_like(x)
    assert torch.equal(patchify(unpatchify(x2, patch, (H // ph, W // pw), C), patch), x2)


def test_patchify_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(30, 32\).*\(8, 8\)"):
        patchify(torch.zeros(1, 3, 30, 32), 8)
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        patchify(torch.zeros(3, 32, 32), 8)
    with pytest.raises(ValueError, match=r"\(B, 16, 192\).*\(1, 15, 192\)"):
        unpatchify(torch.zeros(1, 15, 192), 8, 4, 3)


# ---------------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("L", "ratio", "K"),
    [(196, 0.75, 49), (256, 0.75, 64), (16, 0.75, 4), (16, 0.5, 8), (10, 0.7, 3), (10, 0.3, 7), (4, 0.9, 0),
     (1, 0.0, 1), (7, 0.0, 7), (49, 0.9, 4), (3, 0.5, 1)],
)
def test_kept_count_known_values(L, ratio, K):
    x_kept, mask, ids_restore = random_masking(torch.zeros(2, L, 3), ratio, generator=torch.Generator().manual_seed(0))
    assert x_kept.shape == (2, K, 3)
    assert mask.shape == ids_restore.shape == (2, L)
    assert mask.sum(dim=1).tolist() == [L - K, L - K]


@given(L=st.integers(1, 300), ratio=st.floats(0.0, 1.0, exclude_max=True), B=st.integers(1, 3))
def test_kept_count_property(L, ratio, B):
    K = int(L * (1 - ratio))  # the official rounding: truncation, the cls token never counted
    x = torch.randn(B, L, 2)
    x_kept, mask, ids_restore = random_masking(x, ratio, generator=torch.Generator().manual_seed(L))
    assert x_kept.shape == (B, K, 2)
    assert ((mask == 0) | (mask == 1)).all()
    assert mask.sum(dim=1).tolist() == [float(L - K)] * B
    # ids_restore is a permutation of 0..L-1 in every row.
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(L).expand(B, L))


def _masking_case(B=3, L=20, D=5, ratio=0.6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=gen)
    noise = torch.rand(B, L, generator=gen)
    return x, noise, ratio


def test_ids_restore_inverts_the_shuffle():
    x, noise, ratio = _masking_case()
    B, L, D = x.shape
    x_kept, mask, ids_restore = random_masking(x, ratio, noise=noise)
    K = x_kept.shape[1]
    # The removed tokens, in the order masking would have kept them next: ascending noise after the first K.
    order = [sorted(range(L), key=lambda i, b=b: noise[b, i].item()) for b in range(B)]
    removed = torch.stack([x[b, order[b][K:]] for b in range(B)])  # (B, L-K, D)
    full = torch.cat([x_kept, removed], dim=1)  # (B, L, D) shuffled order
    restored = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(B, L, D))
    assert torch.equal(restored, x)


def test_kept_tokens_are_the_smallest_noise_and_mask_marks_the_rest():
    x, noise, ratio = _masking_case()
    B, L, _ = x.shape
    x_kept, mask, _ = random_masking(x, ratio, noise=noise)
    K = x_kept.shape[1]
    for b in range(B):
        ranked = sorted(range(L), key=lambda i, b=b: noise[b, i].item())
        kept, removed = ranked[:K], ranked[K:]
        assert torch.equal(x_kept[b], x[b, kept])  # small noise = keep, in ascending-noise order
        assert all(mask[b, i] == 0 for i in kept)
        assert all(mask[b, i] == 1 for i in removed)


def test_mask_ratio_zero_keeps_every_token_in_order():
    x, noise, _ = _masking_case()
    x_kept, mask, ids_restore = random_masking(x, 0.0, noise=noise)
    assert torch.equal(x_kept, x)
    assert not mask.any()
    assert torch.equal(ids_restore, torch.arange(x.shape[1]).expand_as(ids_restore))


def test_same_noise_same_result_and_generator_reproducible():
    x, noise, ratio = _masking_case()
    a = random_masking(x, ratio, noise=noise)
    b = random_masking(x, ratio, noise=noise.clone())
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    g1 = random_masking(x, ratio, generator=torch.Generator().manual_seed(7))
    g2 = random_masking(x, ratio, generator=torch.Generator().manual_seed(7))
    g3 = random_masking(x, ratio, generator=torch.Generator().manual_seed(8))
    for u, v in zip(g1, g2, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(g1.mask, g3.mask)
    # A generator draws uniform noise (B, L): passing that noise explicitly reproduces the same masking.
    drawn = torch.rand(x.shape[0], x.shape[1], generator=torch.Generator().manual_seed(7))
    for u, v in zip(g1, random_masking(x, ratio, noise=drawn), strict=True):
        assert torch.equal(u, v)


def test_masking_is_per_sample():
    x = torch.randn(8, 16, 4)
    _, mask, _ = random_masking(x, 0.75, generator=torch.Generator().manual_seed(0))
    assert len({tuple(row.tolist()) for row in mask}) > 1  # not one mask broadcast over the batch


def test_masking_acts_on_tokens_not_features():
    x = torch.randn(2, 16, 8)
    x_kept, _, _ = random_masking(x, 0.5, generator=torch.Generator().manual_seed(0))
    assert x_kept.shape[-1] == 8
    for b in range(2):
        for row in x_kept[b]:
            assert any(torch.equal(row, orig) for orig in x[b])  # every kept row is a whole original token


@pytest.mark.parametrize(
    ("ratio", "exc", "match"),
    [(1.0, ValueError, r"\[0, 1\).*1\.0"), (-0.1, ValueError, r"-0\.1"), (1.5, ValueError, r"1\.5"),
     (float("nan"), ValueError, "nan"), ("0.5", TypeError, r"'0\.5'"), (None, TypeError, "None"),
     (True, TypeError, "True")],
)
def test_masking_rejects_bad_ratio(ratio, exc, match):
    with pytest.raises(exc, match=match):
        random_masking(torch.zeros(1, 4, 2), ratio)


def test_masking_rejects_bad_noise_and_tokens():
    with pytest.raises(ValueError, match=r"\(2, 16\).*\(2, 15\)"):
        random_masking(torch.zeros(2, 16, 4), 0.5, noise=torch.rand(2, 15))
    with pytest.raises(TypeError, match="list"):
        random_masking(torch.zeros(1, 2, 4), 0.5, noise=[[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"\(2, 16\)"):
        random_masking(torch.zeros(2, 16), 0.5)
    with pytest.raises(ValueError, match="meta.*cpu"):
        random_masking(torch.zeros(1, 4, 2), 0.5, noise=torch.rand(1, 4, device="meta"))


# ---------------------------------------------------------------------------------------------------- sin-cos


def reference_sincos(D: int, gh: int, gw: int) -> list[list[float]]:
    """DESIGN.md section 2, literally: cls row of zeros, then per patch [x-half | y-half], each [sin.. | cos..]."""
    quarter = D // 4
    omegas = [1.0 / 10000 ** (i / quarter) for i in range(quarter)]
    rows = [[0.0] * D]
    for y in range(gh):
        for x in range(gw):
            row = []
            for pos in (x, y):  # column index first, then row index
                row += [math.sin(pos * w) for w in omegas]
                row += [math.cos(pos * w) for w in omegas]
            rows.append(row)
    return rows


@pytest.mark.parametrize(("D", "grid"), [(16, (4, 4)), (8, (2, 3)), (32, (3, 5)), (64, (7, 2)), (4, (1, 1))])
def test_sincos_matches_independent_formula(D, grid):
    table = sincos_pos_embed_2d(D, grid)
    expected = torch.tensor(reference_sincos(D, *grid), dtype=torch.float64)
    assert table.shape == (1 + grid[0] * grid[1], D)
    torch.testing.assert_close(table.double(), expected, atol=1e-7, rtol=0)
    no_cls = sincos_pos_embed_2d(D, grid, cls_token=False)
    torch.testing.assert_close(no_cls.double(), expected[1:], atol=1e-7, rtol=0)


def test_sincos_int_grid_is_square_and_rows_are_distinct():
    table = sincos_pos_embed_2d(32, 4)
    torch.testing.assert_close(table, sincos_pos_embed_2d(32, (4, 4)))
    patches = table[1:]
    dists = torch.cdist(patches, patches) + torch.eye(16) * 10
    assert dists.min() > 1e-3  # every position gets its own code
    assert torch.all(table[0] == 0)


def test_sincos_rejects_width_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4.*30"):
        sincos_pos_embed_2d(30, (2, 2))


# ---------------------------------------------------------------------------------------------------- loss


def reference_loss(pred, target, mask, norm_pix_loss=False, eps=1e-6):
    """Per-patch MSE over removed patches, in plain Python floats; unbiased per-patch variance when normalising."""
    total, count = 0.0, 0.0
    B, L, _ = pred.shape
    for b in range(B):
        for l in range(L):
            t = target[b, l].tolist()
            if norm_pix_loss:
                mean, var = statistics.fmean(t), statistics.variance(t)  # variance(): unbiased (n - 1)
                t = [(v - mean) / math.sqrt(var + eps) for v in t]
            per_patch = statistics.fmean([(p - v) ** 2 for p, v in zip(pred[b, l].tolist(), t, strict=True)])
            total += per_patch * mask[b, l].item()
            count += mask[b, l].item()
    return total / count


def _loss_case(seed=0, B=2, L=6, P=5):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, L, P, generator=gen, dtype=torch.float64)
    target = torch.randn(B, L, P, generator=gen, dtype=torch.float64) * 3 + 1
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1]], dtype=torch.float64)
    return pred, target, mask


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_equals_hand_computation(norm_pix_loss):
    pred, target, mask = _loss_case()
    got = masked_mse_loss(pred, target, mask, norm_pix_loss)
    assert got.ndim == 0
    assert got.item() == pytest.approx(reference_loss(pred, target, mask, norm_pix_loss), rel=1e-6)


def test_norm_pix_loss_uses_unbiased_variance_and_eps():
    # A patch whose variance is of the order of eps: the eps and the n-1 both change the result visibly.
    target = torch.tensor([[[0.0, 0.001, 0.002, 0.003], [1.0, 1.0, 1.0, 1.0]]], dtype=torch.float64)
    pred = torch.zeros_like(target)
    mask = torch.ones(1, 2, dtype=torch.float64)
    got = masked_mse_loss(pred, target, mask, norm_pix_loss=True).item()
    assert math.isfinite(got)  # a constant patch normalises to 0, not NaN, thanks to eps
    assert got == pytest.approx(reference_loss(pred, target, mask, True, eps=1e-6), rel=1e-5)
    assert got != pytest.approx(reference_loss(pred, target, mask, True, eps=1e-5), rel=1e-2)

    def biased(t, eps=1e-6):
        mean, var = statistics.fmean(t), statistics.pvariance(t)
        return statistics.fmean([((v - mean) / math.sqrt(var + eps)) ** 2 for v in t])

    with_biased_var = (biased(target[0, 0].tolist()) + 0.0) / 2
    assert got != pytest.approx(with_biased_var, rel=1e-2)


def test_loss_gradient_is_zero_on_visible_patches():
    pred, target, mask = _loss_case()
    for norm in (False, True):
        p = pred.clone().requires_grad_(True)
        masked_mse_loss(p, target, mask, norm).backward()
        visible = mask == 0
        assert torch.all(p.grad[visible] == 0)
        assert torch.all(p.grad[~visible].abs().sum(-1) > 0)


def test_loss_ignores_visible_predictions():
    pred, target, mask = _loss_case()
    changed = pred.clone()
    changed[mask == 0] += 100.0
    assert masked_mse_loss(changed, target, mask) == masked_mse_loss(pred, target, mask)


def test_masked_mse_loss_refuses_a_mask_with_no_removed_patch():
    pred, target = torch.randn(2, 4, 12), torch.randn(2, 4, 12)
    with pytest.raises(ValueError, match="no removed patch"):
        masked_mse_loss(pred, target, torch.zeros(2, 4))
    # One removed patch is enough, and only that patch counts.
    mask = torch.zeros(2, 4)
    mask[1, 2] = 1
    expected = (pred[1, 2] - target[1, 2]).pow(2).mean()
    torch.testing.assert_close(masked_mse_loss(pred, target, mask), expected)
