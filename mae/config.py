"""Model configuration: one frozen dataclass, named presets, and ``create_model``.

The field names are the official ones (He et al. 2021, and the authors' release), so a preset written here reads the
same as the paper's model definitions and the argument names of released checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import MaskedAutoEncoder

__all__ = ["MAEConfig", "PRESETS", "create_model", "list_models", "to_pair"]


def to_pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """Return ``(h, w)`` from an int or a pair, raising a clear error for anything else."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


@dataclass(frozen=True)
class MAEConfig:
    """Everything that defines a Masked Autoencoder. Defaults are the paper's ViT-L/16 (the official class defaults).

    Derived values (grid size, number of patches, patch vector length) are properties, never stored twice.
    """

    img_size: tuple[int, int] = (224, 224)  # (H, W) of input images; an int means square
    patch_size: tuple[int, int] = (16, 16)  # (ph, pw); must divide img_size exactly
    in_chans: int = 3  # any number of channels: 1 (grey), 3 (RGB), 4 (RGB-NIR), ...
    embed_dim: int = 1024  # encoder width D; divisible by num_heads and by 4 (2-D sin-cos table)
    depth: int = 24  # encoder blocks
    num_heads: int = 16  # encoder attention heads
    decoder_embed_dim: int = 512  # decoder width Dd (Sec. 3: the decoder is narrow and light)
    decoder_depth: int = 8  # decoder blocks (paper default 8)
    decoder_num_heads: int = 16  # decoder attention heads
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * width
    norm_pix_loss: bool = False  # normalise each target patch by its own mean/std (Sec. 3, best features)
    mask_ratio: float = 0.75  # fraction of patches removed (Sec. 4: 75% works best)

    def __post_init__(self) -> None:
        # Accept ints for the two size fields; store them as (h, w) pairs so nothing downstream assumes squares.
        object.__setattr__(self, "img_size", to_pair(self.img_size, "img_size"))
        object.__setattr__(self, "patch_size", to_pair(self.patch_size, "patch_size"))
        (H, W), (ph, pw) = self.img_size, self.patch_size
        if H % ph or W % pw:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}: "
                f"height {H} % {ph} = {H % ph}, width {W} % {pw} = {W % pw}"
            )
        for name in ("in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                     "decoder_num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"{width}={getattr(self, width)} must be divisible by {heads}={getattr(self, heads)}"
                )
            if getattr(self, width) % 4:
                raise ValueError(
                    f"{width}={getattr(self, width)} must be divisible by 4 for the 2-D sin-cos position table"
                )
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio!r}")
        check_mask_ratio(self.mask_ratio)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(gh, gw): patches along the height and the width."""
        return self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        """L = gh * gw."""
        gh, gw = self.grid_size
        return gh * gw

    @property
    def patch_dim(self) -> int:
        """Length of one flattened pixel patch: ph * pw * C."""
        return self.patch_size[0] * self.patch_size[1] * self.in_chans

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (pairs as lists); ``MAEConfig(**d)`` rebuilds it."""
        d = dataclasses.asdict(self)
        d["img_size"], d["patch_size"] = list(self.img_size), list(self.patch_size)
        return d

    def replace(self, **overrides: Any) -> MAEConfig:
        """A copy with some fields changed (validated again)."""
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(f"unknown MAEConfig field(s) {unknown}; valid fields: {valid}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MAEConfig:
        """The preset ``name`` with ``overrides`` applied.

        Example: ``MAEConfig.from_name('mae_vit_base_patch16', img_size=448)``.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model {name!r}; available: {list_models()}")
        return PRESETS[name].replace(**overrides)


def check_mask_ratio(mask_ratio: float) -> float:
    """Validate a mask ratio: a real number in [0, 1)."""
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
        raise TypeError(f"mask_ratio must be a float in [0, 1), got {mask_ratio!r}")
    if not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
    return float(mask_ratio)


# Official sizes (paper Table / release code). Decoder 512 wide, 8 blocks, 16 heads.
PRESETS: dict[str, MAEConfig] = {
    "mae_vit_base_patch16": MAEConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16": MAEConfig(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "mae_vit_huge_patch14": MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # Ours, for laptops and tests: ViT-Ti / ViT-S encoders (DeiT widths) with a proportionally light decoder
    # (about a third of the encoder width, 4 blocks), keeping the paper's asymmetric design.
    "mae_vit_tiny_patch16": MAEConfig(
        patch_size=16, embed_dim=192, depth=12, num_heads=3,
        decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4,
    ),
    "mae_vit_small_patch16": MAEConfig(
        patch_size=16, embed_dim=384, depth=12, num_heads=6,
        decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8,
    ),
}


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(PRESETS)


def create_model(name: str, *, device: Any = None, dtype: Any = None, **overrides: Any) -> MaskedAutoEncoder:
    """Build a preset, e.g. ``create_model('mae_vit_base_patch16', norm_pix_loss=True, device='cuda')``.

    Args:
        name: one of ``list_models()``.
        device: where every parameter and buffer is created ('cpu', 'cuda', 'meta', ...).
        dtype: floating dtype of the parameters (default: torch's default dtype).
        **overrides: any ``MAEConfig`` field (img_size, in_chans, mask_ratio, ...).
    """
    from .model import MaskedAutoEncoder

    return MaskedAutoEncoder.from_config(MAEConfig.from_name(name, **overrides), device=device, dtype=dtype)
