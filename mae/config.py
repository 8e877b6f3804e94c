"""Model configuration: one frozen dataclass, the named presets, and the ImageNet normalisation constants.

The field names are the official ones (He et al. 2021, and the authors' release), so a preset written here reads the
same as the paper's model definitions and the argument names of released checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import _checks

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MASKINGS", "MAEConfig", "PRESETS", "list_models", "replace_fields"]

# The masking strategies of the paper's Table 1f (mae.functional: random_masking, block_mask, grid_mask).
MASKINGS = ("random", "block", "grid")

# Per-channel normalisation of the paper's inputs (ImageNet statistics, RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    masking: str = "random"  # which patches: "random" (the paper's), "block" (BEiT's) or "grid" (Table 1f)

    def __post_init__(self) -> None:
        set_field = partial(object.__setattr__, self)  # frozen: fields are stored in their checked, canonical form
        # Ints are accepted for the two size fields, stored as (h, w) pairs so nothing downstream assumes squares.
        set_field("img_size", _checks.to_pair(self.img_size, "img_size"))
        set_field("patch_size", _checks.to_pair(self.patch_size, "patch_size"))
        _checks.check_divisible(self.img_size, self.patch_size)
        for name in ("in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                     "decoder_num_heads"):
            set_field(name, _checks.check_positive_int(getattr(self, name), name))
        for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            if w % h or w % 4:
                need = f"{heads}={h}" if w % h else "4 for the 2-D sin-cos position table"
                raise ValueError(f"{width}={w} must be divisible by {need}")
        set_field("mlp_ratio", _checks.check_finite(self.mlp_ratio, "mlp_ratio", low=1e-6))
        if int(min(self.embed_dim, self.decoder_embed_dim) * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} gives MLPs no hidden unit at width "
                             f"{min(self.embed_dim, self.decoder_embed_dim)}")
        set_field("norm_pix_loss", _checks.check_bool(self.norm_pix_loss, "norm_pix_loss"))
        set_field("mask_ratio", _checks.check_mask_ratio(self.mask_ratio))
        _checks.check_masking(self.masking, MASKINGS, self.mask_ratio, self.grid_size)

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

    @property
    def num_params(self) -> int:
        """Parameters of the model this config describes (position tables included), counted without building it."""
        L, P = self.num_patches, self.patch_dim

        def block(width: int) -> int:  # 2 LayerNorms, fused qkv + proj, fc1 + fc2 (weights and biases)
            hidden = int(width * self.mlp_ratio)
            return 4 * width + 4 * width * width + 4 * width + 2 * width * hidden + hidden + width

        D, Dd = self.embed_dim, self.decoder_embed_dim
        encoder = P * D + D + D + (1 + L) * D + self.depth * block(D) + 2 * D
        decoder = D * Dd + Dd + Dd + (1 + L) * Dd + self.decoder_depth * block(Dd) + 2 * Dd + Dd * P + P
        return encoder + decoder

    def memory_bytes(self, itemsize: int) -> tuple[int, int]:
        """(device, host) bytes that building the model takes: the parameters of ``itemsize`` bytes on its device;
        on the host, the float64 sin-cos tables and the Python objects of the blocks (bounded by 32 KB each)."""
        table = 3 * 8 * (1 + self.num_patches) * max(self.embed_dim, self.decoder_embed_dim)
        return self.num_params * itemsize, table + 2**15 * (self.depth + self.decoder_depth)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (pairs as lists); ``MAEConfig(**d)`` rebuilds it."""
        d = dataclasses.asdict(self)
        d["img_size"], d["patch_size"] = list(self.img_size), list(self.patch_size)
        return d

    def replace(self, **overrides: Any) -> MAEConfig:
        """A copy with some fields changed (validated again)."""
        return replace_fields(self, **overrides)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MAEConfig:
        """The preset ``name`` with ``overrides`` applied, e.g.
        ``MAEConfig.from_name('mae_vit_base_patch16', img_size=448)``."""
        if _checks.check_str(name, "name") not in PRESETS:
            raise ValueError(f"name {name!r} is not a known model; available: {list_models()}")
        return PRESETS[name].replace(**overrides)


# Official sizes (paper Table / release code). Decoder 512 wide, 8 blocks, 16 heads.
PRESETS: dict[str, MAEConfig] = {
    "mae_vit_base_patch16": MAEConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16": MAEConfig(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "mae_vit_huge_patch14": MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # Ours, for laptops and tests: ViT-Ti / ViT-S encoders (DeiT widths) with a proportionally light decoder
    # (about a third of the encoder width, 4 blocks), keeping the paper's asymmetric design.
    "mae_vit_tiny_patch16": MAEConfig(patch_size=16, embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128,
                                      decoder_depth=4, decoder_num_heads=4),
    "mae_vit_small_patch16": MAEConfig(patch_size=16, embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256,
                                       decoder_depth=4, decoder_num_heads=8),
    # Ours, the default run's model (mae-pretrain with no argument): ViT-Tiny narrowed to 128 wide and 4 blocks, a
    # 128 x 2 decoder, on a 16 x 16 grid of 4 px patches at 64 px: small enough to learn something in a few CPU
    # minutes; a coarser 8 x 8 grid leaves too little visible context to beat a mean-colour guess in that time.
    "mae_vit_demo_patch4": MAEConfig(img_size=64, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                                     decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    # The test-size model (like timm's ``test_vit``): 16 patches of 8x8 on 32 px images, 64 wide, 2 + 2 blocks.
    # Small enough that the whole test suite runs in minutes on two CPU cores; not meant to learn anything.
    "mae_vit_test": MAEConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                              decoder_depth=2, decoder_num_heads=4),
}


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(PRESETS)


def replace_fields(config: Any, **overrides: Any) -> Any:
    """A copy of the frozen dataclass ``config`` with some fields changed, refusing unknown names (validated again)."""
    valid = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(f"unknown {type(config).__name__} field(s) {unknown}; valid fields: {valid}")
    return dataclasses.replace(config, **overrides)

