"""Block, grid and user masks (Table 1f): exact counts, their shapes, reproducibility, and the route through noise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mae.functional import (
    block_mask,
    check_mask,
    grid_mask,
    mask_ratio_for,
    mask_to_noise,
    num_kept,
    random_masking,
)

grids = st.tuples(st.integers(1, 16), st.integers(1, 16))
ratios = st.floats(0.0, 0.95)


def regions(grid: torch.Tensor) -> int:
    """Number of 4-connected regions of 1-cells in a (gh, gw) 0/1 grid."""
    gh, gw = grid.shape
    todo = {(r, c) for r in range(gh) for c in range(gw) if grid[r, c]}
    count = 0
    while todo:
        count += 1
        stack = [todo.pop()]
        while stack:
            r, c = stack.pop()
            for cell in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if cell in todo:
                    todo.remove(cell)
                    stack.append(cell)
    return count


def random_mask(batch_size: int, grid_size: tuple[int, int], mask_ratio: float, seed: int) -> torch.Tensor:
    L = grid_size[0] * grid_size[1]
    gen = torch.Generator().manual_seed(seed)
    return random_masking(torch.zeros(batch_size, L, 1), mask_ratio, generator=gen).mask


@given(batch=st.integers(1, 4), grid=grids, ratio=ratios, seed=st.integers(0, 2**31))
def test_block_mask_removes_exactly_l_minus_k_per_row(batch, grid, ratio, seed):
    mask = block_mask(batch, grid, ratio, generator=torch.Generator().manual_seed(seed))
    L = grid[0] * grid[1]
    assert mask.shape == (batch, L) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum(dim=1).tolist() == [L - num_kept(L, ratio)] * batch


@pytest.mark.parametrize(("grid", "ratio"),
                         [((14, 14), 0.75), ((8, 8), 0.75), ((6, 12), 0.5), ((14, 14), 0.4), ((16, 16), 0.9)])
def test_block_masks_are_clumped(grid, ratio):
    # Regions of removed AND of kept patches: at high ratios the removed patches of a random mask join up into one
    # region too, while its kept patches stay scattered; blocks leave few regions of either.
    blocks = block_mask(64, grid, ratio, generator=torch.Generator().manual_seed(0)).view(64, *grid)
    randoms = random_mask(64, grid, ratio, seed=0).view(64, *grid)
    block_regions = sum(regions(m) + regions(1 - m) for m in blocks) / 64
    random_regions = sum(regions(m) + regions(1 - m) for m in randoms) / 64
    assert block_regions < 0.5 * random_regions, (block_regions, random_regions)


def test_block_mask_same_generator_same_masks_other_seed_other_masks():
    def draw(seed):
        return block_mask(8, (7, 9), 0.75, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    torch.manual_seed(5)
    first = block_mask(8, 7, 0.6)
    torch.manual_seed(5)
    assert torch.equal(first, block_mask(8, 7, 0.6))  # no generator: torch's global one, seeded


@given(batch=st.integers(1, 8), half=st.tuples(st.integers(1, 8), st.integers(1, 8)), seed=st.integers(0, 2**31))
def test_grid_mask_keeps_one_patch_of_every_2x2_cell_at_one_offset(batch, half, seed):
    gh, gw = 2 * half[0], 2 * half[1]
    mask = grid_mask(batch, (gh, gw), 0.75, generator=torch.Generator().manual_seed(seed))
    assert mask.shape == (batch, gh * gw)
    kept = (1 - mask).view(batch, half[0], 2, half[1], 2)  # (B, cell row, row in cell, cell column, column in cell)
    assert torch.equal(kept.sum(dim=(2, 4)), torch.ones(batch, *half))  # one kept per cell
    # The same position inside every cell of an image: a regular lattice, as in the paper's Fig. 6.
    assert torch.equal(kept, kept[:, :1, :, :1, :].expand_as(kept))


def test_grid_mask_offsets_vary_per_image_unless_fixed():
    mask = grid_mask(64, (4, 6), generator=torch.Generator().manual_seed(0)).view(64, 4, 6)
    offsets = {tuple((1 - m[:2, :2]).nonzero()[0].tolist()) for m in mask}
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}
    fixed = grid_mask(3, (4, 6), offset=(1, 0)).view(3, 4, 6)
    expected = torch.ones(4, 6)
    expected[1::2, 0::2] = 0
    assert torch.equal(fixed, expected.expand(3, 4, 6))
    gen = torch.Generator().manual_seed(9)
    again = torch.Generator().manual_seed(9)
    assert torch.equal(grid_mask(16, 8, generator=gen), grid_mask(16, 8, generator=again))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"grid_size": 8, "mask_ratio": 0.5}, "mask_ratio must be 0.75, got 0.5"),
    ({"grid_size": (8, 7), "mask_ratio": 0.75}, r"even patch grid.*\(8, 7\)"),
    ({"grid_size": 8, "mask_ratio": 0.75, "offset": (2, 0)}, r"offset must be.*\(2, 0\)"),
])
def test_grid_mask_refuses_what_it_cannot_tile(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grid_mask(2, **kwargs)


@given(batch=st.integers(1, 4), grid=grids, ratio=ratios, seed=st.integers(0, 2**31), block=st.booleans())
def test_mask_to_noise_makes_argsort_masking_reproduce_the_mask(batch, grid, ratio, seed, block):
    L = grid[0] * grid[1]
    mask = block_mask(batch, grid, ratio, generator=torch.Generator().manual_seed(seed)) if block else (
        random_mask(batch, grid, ratio, seed))
    removed = check_mask(mask)
    noise = mask_to_noise(mask, generator=torch.Generator().manual_seed(seed))
    again = random_masking(torch.zeros(batch, L, 1), mask_ratio_for(L, removed), noise=noise)
    assert torch.equal(again.mask, mask)
    K = L - removed
    assert torch.equal(mask.gather(1, again.ids_keep), torch.zeros(batch, K))  # kept patches rank first


def test_mask_to_noise_orders_randomly_within_groups_and_reproducibly():
    mask = torch.zeros(2, 64)
    mask[:, 16:] = 1
    noise = mask_to_noise(mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise, mask_to_noise(mask, generator=torch.Generator().manual_seed(0)))
    order = noise.argsort(dim=1)
    assert set(order[0, :16].tolist()) == set(range(16))
    assert order[0, :16].tolist() != list(range(16))  # not the identity: a random order inside the kept group
    assert not torch.equal(order[0], order[1])


def test_mask_ratio_for_gives_exactly_the_kept_count():
    for L in range(1, 300):
        for removed in range(L):
            assert num_kept(L, mask_ratio_for(L, removed)) == L - removed


def test_check_mask_accepts_bool_int_and_float_masks():
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]])
    assert check_mask(mask) == 2
    assert check_mask(mask.bool(), batch_size=2, num_patches=4) == 2
    assert check_mask(mask.float()) == 2
    assert check_mask(torch.zeros(3, 5)) == 0
    assert check_mask(torch.ones(3, 1)) == 1  # K = 0 is allowed, as random masking gives for L = 1 at ratio 0.5


@pytest.mark.parametrize(("mask", "kwargs", "error", "match"), [
    ([[1, 0]], {}, TypeError, "mask must be a torch.Tensor"),
    (torch.ones(4), {}, ValueError, r"mask must be \(B, L\).*got \(4,\)"),
    (torch.zeros(2, 4), {"num_patches": 16}, ValueError, r"\(B, 16\), got \(2, 4\)"),
    (torch.zeros(2, 4), {"batch_size": 3}, ValueError, r"\(3, L\), got \(2, 4\)"),
    (torch.tensor([[0.0, 0.5]]), {}, ValueError, "only 0 .* and 1"),
    (torch.tensor([[1, 0, 0], [1, 1, 0]]), {}, ValueError, r"same number.*\[1, 2\]"),
])
def test_check_mask_refuses_bad_masks(mask, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_mask(mask, **kwargs)
    if isinstance(mask, torch.Tensor) and not kwargs:
        with pytest.raises(error, match=match):
            mask_to_noise(mask)


def test_block_mask_argument_errors():
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        block_mask(2, 8, 1.0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        block_mask(0, 8, 0.75)
    with pytest.raises(TypeError, match="grid_size must be an int"):
        block_mask(2, 8.0, 0.75)


# ---------------------------------------------------------------------------------------------------- in the model


def _model(**overrides):
    from mae import create_model

    torch.manual_seed(0)
    return create_model("mae_vit_test", **overrides)  # 32 px, patch 8: a 4x4 grid, L = 16


@pytest.mark.parametrize("masking", ["random", "block", "grid"])
def test_model_masking_strategies_keep_exact_counts_and_reproduce(masking):
    model = _model()
    imgs = torch.randn(3, 3, 32, 32)
    out = model.encoder(imgs, 0.75, masking=masking, generator=torch.Generator().manual_seed(1))
    again = model.encoder(imgs, 0.75, masking=masking, generator=torch.Generator().manual_seed(1))
    assert out.latent.shape == (3, 1 + 4, 64)
    assert out.mask.sum(dim=1).tolist() == [12.0] * 3
    assert torch.equal(out.mask, again.mask) and torch.equal(out.latent, again.latent)
    if masking == "grid":  # one kept patch in every 2x2 cell
        cells = out.mask.view(3, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(3, 4, 4)  # (B, cell, 4 patches)
        assert torch.equal((1 - cells).sum(dim=-1), torch.ones(3, 4))


def test_model_default_masking_comes_from_the_config():
    model = _model(masking="grid")
    loss, pred, mask = model(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    cells = mask.view(2, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(2, 4, 4)
    assert torch.equal((1 - cells).sum(dim=-1), torch.ones(2, 4)) and torch.isfinite(loss)


@pytest.mark.parametrize("masking", ["block", "grid"])
def test_forward_features_ignores_the_default_masking(masking):
    # Downstream evaluation (mae.eval) reads features of models pretrained with any strategy.
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(_model(masking=masking).forward_features(imgs), _model().forward_features(imgs))


def test_a_user_mask_is_obeyed_by_encoder_and_forward():
    model = _model()
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16)
    mask[0, [0, 1, 2, 3, 4, 5]] = 1
    mask[1, [10, 11, 12, 13, 14, 15]] = 1
    latent, got, ids_restore = model.encoder(imgs, mask=mask)
    assert torch.equal(got, mask) and latent.shape == (2, 1 + 10, 64)
    kept = torch.argsort(ids_restore, dim=1)[:, :10]  # the patches the encoder saw
    assert torch.equal(mask.gather(1, kept), torch.zeros(2, 10))
    # The same as giving the model noise that ranks the kept patches first.
    noise = (mask + torch.arange(16) / 100).contiguous()
    ref = model.encoder(imgs, 6 / 16 - 1e-3, noise=noise)  # K = int(16 * (1 - 0.374)) = 10
    torch.testing.assert_close(latent[:, 0], ref.latent[:, 0], rtol=1e-5, atol=1e-5)  # cls sees the same patches
    loss, pred, out_mask = model(imgs, mask=mask)
    assert torch.equal(out_mask, mask) and torch.isfinite(loss)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mask": torch.tensor([[1.0] * 4 + [0.0] * 12, [1.0] * 5 + [0.0] * 11])}, "same number"),
    ({"mask": torch.zeros(2, 15)}, r"\(2, 16\)"),
    ({"mask": torch.full((2, 16), 0.5)}, "only 0"),
    ({"mask": torch.ones(2, 16)}, "keeps no patch"),
    ({"mask": torch.zeros(2, 16), "noise": torch.rand(2, 16)}, "mask alone"),
    ({"masking": "grid", "mask_ratio": 0.5}, "0.75"),
    ({"masking": "checkerboard"}, "random.*block.*grid"),
])
def test_model_masking_errors_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model().encoder(torch.randn(2, 3, 32, 32), **kwargs)


def test_forward_refuses_a_user_mask_that_removes_nothing():
    with pytest.raises(ValueError, match="no removed patch"):
        _model()(torch.randn(2, 3, 32, 32), mask=torch.zeros(2, 16))


def test_grid_masking_needs_an_even_grid_at_construction():
    from mae import MAEConfig

    with pytest.raises(ValueError, match="even patch grid"):
        MAEConfig.from_name("mae_vit_test", img_size=24, masking="grid")  # 3x3 grid
