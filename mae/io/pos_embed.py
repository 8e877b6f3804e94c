"""Position tables for another image size: regenerate a fixed sin-cos table, resize a learned one.

When the model's image size differs from the checkpoint's, the patch grid changes and so does the length of
``pos_embed`` / ``decoder_pos_embed`` (1, 1 + gh*gw, D). A fixed sin-cos table is a function of the grid and is
rebuilt exactly; any other (learned, e.g. fine-tuned) table is resized bicubically with its cls row kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import to_pair
from ..functional import sincos_pos_embed_2d

__all__ = ["adapt_pos_embed", "resize_pos_embed", "source_grid"]


def resize_pos_embed(table: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
    """Resize a learned position table (1, 1 + gh*gw, D) to another grid, bicubically; the cls row is kept.

    Bicubic, corners not aligned, in float32: the interpolation the MAE fine-tuning code uses for larger images.
    """
    (gh, gw), (nh, nw) = src_grid, dst_grid
    if table.ndim != 3 or table.shape[1] != 1 + gh * gw:
        raise ValueError(f"table must be (1, 1 + {gh}*{gw}, D) for grid {src_grid}, got {tuple(table.shape)}")
    D = table.shape[-1]
    grid = table[:, 1:].float().reshape(1, gh, gw, D).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False)  # (1, D, nh, nw)
    patches = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, D).to(table.dtype)  # (1, nh*nw, D)
    return torch.cat([table[:, :1], patches], dim=1)  # (1, 1 + nh*nw, D)


def adapt_pos_embed(
    table: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], name: str = "pos_embed"
) -> tuple[Tensor, str | None]:
    """Make a file's position table (1, 1 + L, D) fit another patch grid.

    A fixed sin-cos table is regenerated exactly for ``dst_grid``; any other (learned) table is resized bicubically
    with its cls row kept (``resize_pos_embed``). An all-zero table, never intended (it hides every position;
    transformers 5 leaves one in a freshly built ViTMAE), is replaced by the sin-cos table.

    Returns:
        ``(table, note)``; the note says what was done, None if the table was used as it is.
    """
    D = table.shape[-1]
    if not bool(table.any()):
        note = f"{name} in the file is all zeros; replaced by the fixed sin-cos table"
        return sincos_pos_embed_2d(D, dst_grid).unsqueeze(0).to(table.dtype), note
    if tuple(src_grid) == tuple(dst_grid):
        return table, None
    if torch.allclose(table.float(), sincos_pos_embed_2d(D, src_grid).unsqueeze(0), atol=1e-5, rtol=0):
        note = f"{name}: sin-cos table regenerated for grid {tuple(dst_grid)} (file: {tuple(src_grid)})"
        return sincos_pos_embed_2d(D, dst_grid).unsqueeze(0).to(table.dtype), note
    note = f"{name}: learned table resized bicubically from grid {tuple(src_grid)} to {tuple(dst_grid)} (cls row kept)"
    return resize_pos_embed(table, src_grid, dst_grid), note


def source_grid(table: Tensor, config: Mapping[str, Any] | None) -> tuple[int, int]:
    """The grid a file's table was made for: its config's, else the square one (as in all released files)."""
    num_patches = table.shape[1] - 1
    if config is not None and "img_size" in config and "patch_size" in config:
        H, W = to_pair(config["img_size"], "img_size")
        ph, pw = to_pair(config["patch_size"], "patch_size")
        if (H // ph) * (W // pw) == num_patches:
            return H // ph, W // pw
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"cannot tell the grid of a position table with {num_patches} patch rows (not a square); "
            "load it into a model of the checkpoint's own img_size"
        )
    return side, side
