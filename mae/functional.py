"""The algorithm as pure functions: patchify, masking, position tables, un-shuffling, and the loss.

Shape legend:
    B  batch              C  image channels          H, W  image height, width
    ph, pw  patch size    gh, gw  patch grid (H // ph, W // pw)
    L  patches (gh * gw)  K  kept (visible) patches   D  token width
    P  pixels per patch (ph * pw * C)

Mask convention everywhere: ``mask`` is (B, L) in the original patch order, 1 = removed (masked), 0 = kept (visible).

Each public function checks its arguments once, at its top, then runs the formula, a private function of the same
name with a leading underscore. The model calls the formulas directly: its own boundary has checked the inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from . import _checks
from ._checks import check_mask

__all__ = [
    "MaskingOutput", "num_kept", "patchify", "unpatchify", "random_masking", "shuffle_order", "gather_tokens",
    "restore_sequence", "sincos_pos_embed_2d", "patch_mean_std", "normalize_patches", "masked_mse_loss",
    "per_patch_mse", "block_mask", "grid_mask", "check_mask", "mask_ratio_for", "mask_to_noise",
]


def patchify(imgs: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Cut images into flattened patches, row-major over the grid.

    Args:
        imgs: (B, C, H, W), H and W multiples of the patch size.
        patch_size: p or (ph, pw).

    Returns:
        (B, L, ph * pw * C); each patch vector is ordered (row inside patch, column inside patch, channel).
    """
    ph, pw = _checks.to_pair(patch_size, "patch_size")
    _checks.check_divisible(_checks.check_tensor(imgs, "imgs", "(B, C, H, W)", ndim=4).shape[-2:], (ph, pw),
                            "imgs size")
    return _patchify(imgs, (ph, pw))


def _patchify(imgs: Tensor, patch_size: tuple[int, int]) -> Tensor:
    return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size[0], q=patch_size[1])  # (B, L, P)


def unpatchify(x: Tensor, patch_size: int | tuple[int, int], grid_size: int | tuple[int, int], in_chans: int) -> Tensor:
    """Exact inverse of ``patchify``: (B, L, ph * pw * C) -> (B, C, gh * ph, gw * pw)."""
    (ph, pw), (gh, gw), C = _checks.check_unpatchify_args(x, patch_size, grid_size, in_chans)
    return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=gh, w=gw, p=ph, q=pw, c=C)  # (B, C, H, W)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """K = int(L * (1 - mask_ratio)): visible patches per image (the official rounding)."""
    return _num_kept(_checks.check_positive_int(num_patches, "num_patches"), _checks.check_mask_ratio(mask_ratio))


def _num_kept(num_patches: int, mask_ratio: float) -> int:
    return int(num_patches * (1 - mask_ratio))


class MaskingOutput(NamedTuple):
    """Unpacks like the release code's ``x_masked, mask, ids_restore = random_masking(x, mask_ratio)``."""

    x_kept: Tensor  # (B, K, D) the visible rows, in shuffled order
    mask: Tensor  # (B, L) 1 = removed, 0 = kept, original order
    ids_restore: Tensor  # (B, L) int64; gathering [kept; removed] entries with it gives the original order

    @property
    def ids_keep(self) -> Tensor:
        """(B, K) original positions of ``x_kept``'s rows: ``x_kept[b, i] = x[b, ids_keep[b, i]]``."""
        return shuffle_order(self.ids_restore)[:, : self.x_kept.shape[1]]

    @property
    def ids_removed(self) -> Tensor:
        """(B, L - K) original positions of the removed patches, in shuffled order."""
        return shuffle_order(self.ids_restore)[:, self.x_kept.shape[1] :]


def shuffle_order(ids_restore: Tensor) -> Tensor:
    """``ids_shuffle`` (B, L) back from ``ids_restore``: the inverse permutation (kept patches first, then removed)."""
    return torch.argsort(ids_restore, dim=1)


def random_masking(x: Tensor, mask_ratio: float, *, noise: Tensor | None = None,
                   generator: torch.Generator | None = None) -> MaskingOutput:
    """Per-sample random masking by argsort of uniform noise (Sec. 3, "random sampling").

    Each sample draws noise (B, L) in [0, 1); the patches with the smallest noise are kept. Given the same noise the
    result is fully determined, so passing ``noise`` reproduces a masking exactly, and any masking strategy that can
    rank the patches (block, grid, a user's mask: ``mask_to_noise``) runs through this one function.

    Args:
        x: (B, L, D) one row per patch: tokens, or, as the MAE encoder does, pixel patches (B, L, P) so that only
            the visible ones get embedded.
        mask_ratio: fraction of the L patches to remove, in [0, 1).
        noise: optional (B, L) tensor ranking the patches (small = keep).
        generator: optional ``torch.Generator`` to draw the noise from (ignored when ``noise`` is given).

    Returns:
        ``MaskingOutput(x_kept (B, K, D), mask (B, L), ids_restore (B, L))`` with K = int(L * (1 - mask_ratio)),
        and the derived ``.ids_keep`` (B, K) / ``.ids_removed`` (B, L - K). The mask has ``x``'s dtype.
    """
    _checks.check_noise(noise, generator, _checks.check_tensor(x, "x", "(B, L, D)", ndim=3).shape[:2], x.device, "x")
    return _random_masking(x, _checks.check_mask_ratio(mask_ratio), noise, generator)


def _random_masking(x: Tensor, mask_ratio: float, noise: Tensor | None,
                    generator: torch.Generator | None) -> MaskingOutput:
    B, L = x.shape[:2]
    K = _num_kept(L, mask_ratio)
    if noise is None:
        gen_device = generator.device if generator is not None else x.device
        noise = torch.rand(B, L, generator=generator, device=gen_device).to(x.device)  # (B, L)
    if K == L:
        # Nothing removed (mask_ratio 0, e.g. for feature extraction): keep the original order, not a shuffle.
        ids_shuffle = torch.arange(L, device=x.device).expand(B, L)  # (B, L)
    else:
        ids_shuffle = torch.argsort(noise, dim=1)  # (B, L) ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L) the inverse permutation

    # The mask in shuffled order is [0] * K + [1] * (L - K); unshuffled, it is 1 exactly at the removed patches.
    mask = (ids_restore >= K).to(x.dtype if x.is_floating_point() else torch.float32)  # (B, L)
    x_kept = gather_tokens(x, ids_shuffle[:, :K])  # (B, K, D)
    return MaskingOutput(x_kept, mask, ids_restore)


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Pick tokens per sample: ``out[b, i] = x[b, ids[b, i]]``, (B, N, D) at (B, M) indices -> (B, M, D)."""
    B, M = ids.shape
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(B, M, x.shape[-1]))  # (B, M, D)


def restore_sequence(x_kept: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    """Append mask tokens for the removed patches and undo the shuffle.

    Args:
        x_kept: (B, K, D) tokens of the visible patches, in the order ``random_masking`` kept them.
        mask_token: (1, 1, D) learned token shared by every removed patch.
        ids_restore: (B, L) from ``random_masking``.

    Returns:
        (B, L, D) in the original patch order: visible positions carry their token, removed ones the mask token.
    """
    B, K, D = x_kept.shape
    L = ids_restore.shape[1]
    x = torch.cat([x_kept, mask_token.to(x_kept.dtype).expand(B, L - K, D)], dim=1)  # (B, L, D) shuffled order
    return gather_tokens(x, ids_restore)  # (B, L, D) original order


def sincos_pos_embed_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = True) -> Tensor:
    """Fixed 2-D sine-cosine position table (Sec. 3 / the release code), computed in float64.

    The first D/2 dims encode the column index (x), the last D/2 the row index (y); each half is
    [sin(pos * w_i) for i] + [cos(pos * w_i) for i] with w_i = 1 / 10000^(i / (D/4)), i = 0 .. D/4 - 1.

    Returns:
        float32 (1 + L, D) if ``cls_token`` (row 0 all zeros), else (L, D); rows in row-major patch order.
    """
    return _sincos_pos_embed_2d(*_checks.check_pos_embed_args(embed_dim, grid_size, cls_token))


def _sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> Tensor:
    gh, gw = grid_size
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)  # (D/4,)
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:  # (L,) -> (L, D/2)
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(cols), encode(rows)], axis=1)  # (L, D): x half first, then y half
    if cls_token:
        table = np.concatenate([np.zeros((1, embed_dim)), table], axis=0)  # (1 + L, D)
    return torch.from_numpy(table).float()


def patch_mean_std(target: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Each patch's mean and sqrt(unbiased variance + eps): (B, L, P) -> two (B, L, 1) tensors.

    The statistics of ``norm_pix_loss`` (unbiased variance, as in the release code); ``normalize_patches`` divides by
    them and ``mae.visualize`` multiplies by them to draw a norm-pix prediction in pixel space.
    """
    mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
    std = (target.var(dim=-1, keepdim=True) + eps) ** 0.5  # (B, L, 1)
    return mean, std


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise every patch by its own mean and unbiased variance: (t - mean) / sqrt(var + eps). Shape kept."""
    mean, std = patch_mean_std(target, eps)
    return (target - mean) / std


def masked_mse_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix_loss: bool = False) -> Tensor:
    """Mean squared error over the removed patches only (Sec. 3: "we compute the loss only on masked patches").

    Args:
        pred: (B, L, P) predicted pixels.
        target: (B, L, P) true pixels (``patchify(imgs)``).
        mask: (B, L), 1 = removed. Visible patches get exactly zero weight and zero gradient. A mask with no
            removed patch is refused with a ValueError (the mean would be 0 / 0).
        norm_pix_loss: normalise each target patch first (``normalize_patches``).

    Returns:
        Scalar: per-patch MSE (mean over P) averaged over the removed patches.
    """
    return _masked_mse_loss(pred, target, mask, _checks.check_mse_args(pred, target, mask, norm_pix_loss))


def _masked_mse_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix_loss: bool) -> Tensor:
    per_patch = per_patch_mse(pred, target, norm_pix_loss)  # (B, L)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


def per_patch_mse(pred: Tensor, target: Tensor, norm_pix_loss: bool = False) -> Tensor:
    """Squared error averaged over each patch's pixels: (B, N, P) x 2 -> (B, N), in at least float32.

    bf16/fp16 predictions (autocast) are upcast: the squared errors of a well-trained model are small, and summing
    them in bf16 would lose most of their bits. A float64 model keeps a float64 loss.
    """
    dtype = torch.promote_types(pred.dtype, torch.float32)
    target = target.to(dtype)
    if norm_pix_loss:
        target = normalize_patches(target)
    return (pred.to(dtype) - target).pow(2).mean(dim=-1)  # (B, N)


# ---- Masking strategies (Table 1f): each gives a (B, L) mask with exactly L - K removed per row, which feeds the one
# argsort masking through ``mask_to_noise``.

BLOCK_MIN_PATCHES = 16  # BEiT's smallest block (its pretraining setting), kept by MAE's Table 1f
BLOCK_ASPECT = (0.3, 1 / 0.3)  # block height / width, drawn log-uniformly
_BLOCK_TRIES = 10  # attempts to place one block before the random top-up finishes the mask (BEiT's limit)


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A NumPy generator seeded from torch's (or torch's global one): the same torch seed gives the same masks."""
    gen_device = generator.device if generator is not None else "cpu"
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device)))


def block_mask(batch_size: int, grid_size: int | tuple[int, int], mask_ratio: float, *,
               generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """BEiT-style block-wise masking (Table 1f), with exactly L - K removed patches in every row.

    Rectangles are placed at random until L - K patches are removed. Each draws an area uniformly between
    ``min(16, L - K)`` and the number still to remove, and an aspect ratio (height / width) log-uniformly in
    [0.3, 1/0.3]; its sides are rounded and clamped to the grid, so on grids too small or too thin for 16 patches at
    that aspect the block is the largest that fits. A block is placed only if it removes at least one new patch and
    no more than are still to remove (it may overlap earlier blocks); after 10 failed placements the remaining
    patches (fewer than a block, typically) are removed at random. Blocks never overshoot, so no trimming is needed.

    ``grid_size`` is (gh, gw) or one int; ``generator`` (torch's global one when None): same state, same masks.
    Returns float32 (B, L), 1 = removed, row-major over the grid.
    """
    return _block_mask(*_checks.check_mask_args(batch_size, grid_size, mask_ratio, generator, device), generator)


def _block_mask(B: int, grid_size: tuple[int, int], mask_ratio: float, device: torch.device | None,
                generator: torch.Generator | None) -> Tensor:
    gh, gw = grid_size
    L = gh * gw
    remove = L - _num_kept(L, mask_ratio)
    rng = _numpy_rng(generator)
    min_area = min(BLOCK_MIN_PATCHES, remove)
    log_lo, log_hi = np.log(BLOCK_ASPECT[0]), np.log(BLOCK_ASPECT[1])
    masks = np.zeros((B, gh, gw), dtype=bool)
    for grid in masks:  # each (gh, gw) view is filled in place
        done = 0
        while done < remove:
            for _ in range(_BLOCK_TRIES):
                area = rng.uniform(min_area, max(min_area, remove - done))
                aspect = np.exp(rng.uniform(log_lo, log_hi))
                h = min(gh, max(1, round(np.sqrt(area * aspect))))
                w = min(gw, max(1, round(np.sqrt(area / aspect))))
                top, left = rng.integers(0, gh - h + 1), rng.integers(0, gw - w + 1)
                new = h * w - int(grid[top:top + h, left:left + w].sum())
                if 0 < new <= remove - done:
                    grid[top:top + h, left:left + w] = True
                    done += new
                    break
            else:  # no block fits what is left: finish at random
                free = np.flatnonzero(~grid)
                grid.flat[rng.choice(free, remove - done, replace=False)] = True
                done = remove
    return torch.from_numpy(masks.reshape(B, L)).to(device=device, dtype=torch.float32)  # (B, L)


def grid_mask(batch_size: int, grid_size: int | tuple[int, int], mask_ratio: float = 0.75, *,
              offset: tuple[int, int] | None = None, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> Tensor:
    """Grid-wise masking (Table 1f, Fig. 6): keep one patch of every 2x2 cell, a regular lattice; ratio 0.75 only.

    The kept patch sits at the same ``offset`` (row, column) inside every cell of an image, so the visible patches
    form the paper's regular grid. By default the offset is drawn per image: with one fixed offset three quarters of
    the positions would never be seen by the encoder and one quarter never predicted, a bias the paper's figure does
    not call for (it shows the pattern, not a position). Pass ``offset=(0, 0)`` for one fixed lattice.

    Returns float32 (B, L), 1 = removed, exactly L / 4 kept per row."""
    B, grid, offset, device = _checks.check_grid_mask_args(batch_size, grid_size, mask_ratio, offset, generator, device)
    return _grid_mask(B, grid, offset, device, generator)


def _grid_mask(B: int, grid_size: tuple[int, int], offset: tuple[int, int] | None, device: torch.device | None,
               generator: torch.Generator | None) -> Tensor:
    gh, gw = grid_size
    gen_device = generator.device if generator is not None else "cpu"
    offsets = (torch.randint(0, 2, (B, 2), generator=generator, device=gen_device) if offset is None
               else torch.tensor(offset).expand(B, 2)).to(device)  # (B, 2)
    rows = torch.arange(gh, device=device).view(1, gh, 1) % 2  # (1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, gw) % 2  # (1, 1, gw)
    kept = (rows == offsets[:, 0].view(B, 1, 1)) & (cols == offsets[:, 1].view(B, 1, 1))  # (B, gh, gw)
    return (~kept).reshape(B, gh * gw).float()  # (B, L)


def mask_ratio_for(num_patches: int, num_removed: int) -> float:
    """A mask ratio whose K = int(L * (1 - ratio)) is exactly L - num_removed (num_removed / L can round off by one)."""
    return 0.0 if num_removed == 0 else (num_removed - 0.5) / num_patches


def mask_to_noise(mask: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Masking noise that makes the argsort masking reproduce ``mask``: kept patches rank first, removed ones last.

    Kept patches get noise in [0, 0.49), removed ones in [0.5, 0.99), each group in random order, so
    ``random_masking(x, mask_ratio_for(L, removed), noise=mask_to_noise(mask)).mask`` is ``mask`` itself.

    Args: ``mask`` (B, L), 1 = removed, the same count in every row; ``generator`` for the order in a group.
    Returns float32 (B, L) on the mask's device.
    """
    check_mask(mask)
    return _mask_to_noise(mask, _checks.check_generator(generator))


def _mask_to_noise(mask: Tensor, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else mask.device
    u = torch.rand(mask.shape, generator=generator, device=gen_device).to(mask.device)  # (B, L) in [0, 1)
    return mask.float() * 0.5 + u * 0.49  # (B, L); 0.49 keeps the groups apart after float32 rounding
