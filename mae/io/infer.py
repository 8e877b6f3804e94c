"""What model a state dict describes: read an ``MAEConfig`` off the tensor shapes, or check a stated one against them.

Shapes reveal widths, depths, patch size, channels, MLP ratio and (for a square grid) the image size; head counts,
which no shape reveals, come from the preset with the same encoder width and depth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..config import PRESETS, MAEConfig

__all__ = ["check_config_fits", "infer_config"]


def _count_blocks(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def _shape_facts(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """The config fields the tensors fix, for whichever of the defining tensors are present."""
    facts: dict[str, Any] = {}
    if "cls_token" in state_dict:
        facts["embed_dim"] = state_dict["cls_token"].shape[-1]
    if "patch_embed.proj.weight" in state_dict:
        _, facts["in_chans"], ph, pw = state_dict["patch_embed.proj.weight"].shape
        facts["patch_size"] = (ph, pw)
    if any(k.startswith("blocks.") for k in state_dict):
        facts["depth"] = _count_blocks(state_dict, "blocks")
    if "blocks.0.mlp.fc1.weight" in state_dict and "embed_dim" in facts:
        facts["mlp_ratio"] = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / facts["embed_dim"]
    if "decoder_embed.weight" in state_dict:
        facts["decoder_embed_dim"] = state_dict["decoder_embed.weight"].shape[0]
        facts["decoder_depth"] = _count_blocks(state_dict, "decoder_blocks")
    return facts


def check_config_fits(config: MAEConfig, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Refuse a stated config (a ``config.json``) that disagrees with the tensors, before any model is built.

    A small file whose config claims a huge model would otherwise allocate that model first and only then find
    that nothing fits.

    Raises:
        ValueError: naming every field where the config and the tensors disagree.
    """
    facts = _shape_facts(state_dict)
    wrong = [
        f"{name}={getattr(config, name)!r} but the tensors say {value!r}"
        for name, value in facts.items()
        if name != "mlp_ratio" and getattr(config, name) != value
    ]
    if "mlp_ratio" in facts:
        hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
        if int(config.embed_dim * config.mlp_ratio) != hidden:
            wrong.append(f"mlp_ratio={config.mlp_ratio!r} (MLP width {int(config.embed_dim * config.mlp_ratio)}) "
                         f"but the tensors have an MLP {hidden} wide")
    if wrong:
        raise ValueError(
            f"{source}: the config does not describe the weights in the file ({'; '.join(wrong)}); nothing was "
            "built. Fix or remove the config file (the model can be inferred from the shapes)"
        )


def infer_config(state_dict: Mapping[str, Tensor], **overrides: Any) -> tuple[MAEConfig, list[str]]:
    """Read an ``MAEConfig`` off the tensor shapes of a state dict with our keys; ``overrides`` win.

    Widths, depths, patch size, channels and MLP ratio come from shapes; the image size from the length of
    ``pos_embed`` assuming a square grid (as in every released file); head counts, which no shape reveals, from the
    preset with the same width and depth (else they must be given). Without decoder weights the decoder is the
    matching preset's, else the paper's (512 wide, 8 blocks, 16 heads).

    Returns:
        ``(config, notes)``.
    """
    notes: list[str] = []
    required = ("cls_token", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    absent = [k for k in required if k not in state_dict]
    if absent:
        raise ValueError(
            f"cannot infer the model from the weights: keys {absent} are missing (is this an MAE/ViT checkpoint?); "
            "to load it anyway, build the model yourself and call load_checkpoint(model, source)"
        )
    found = _shape_facts(state_dict)
    ph, pw = found["patch_size"]
    if "pos_embed" in state_dict:
        num_patches = state_dict["pos_embed"].shape[1] - 1
        side = math.isqrt(num_patches)
        if side * side == num_patches:
            found["img_size"] = (side * ph, side * pw)
        elif "img_size" not in overrides:
            raise ValueError(
                f"pos_embed has {num_patches} patch rows, not a square grid; pass img_size=(H, W) to say which grid"
            )
    elif "img_size" not in overrides:
        notes.append(f"no pos_embed in the weights to read the image size from; using {MAEConfig().img_size}")

    preset = next(
        (n for n, p in PRESETS.items() if (p.embed_dim, p.depth) == (found["embed_dim"], found["depth"])), None
    )
    if preset is not None:
        p = PRESETS[preset]
        found["num_heads"] = p.num_heads
        decoder = (found.get("decoder_embed_dim", p.decoder_embed_dim), found.get("decoder_depth", p.decoder_depth))
        if decoder == (p.decoder_embed_dim, p.decoder_depth):
            found.update(decoder_embed_dim=p.decoder_embed_dim, decoder_depth=p.decoder_depth,
                         decoder_num_heads=p.decoder_num_heads)
        notes.append(f"encoder shapes match the preset {preset!r}; heads taken from it")
    defaults = MAEConfig()
    if "decoder_embed_dim" not in found:
        found.update(decoder_embed_dim=defaults.decoder_embed_dim, decoder_depth=defaults.decoder_depth)
    if "decoder_num_heads" not in found and found["decoder_embed_dim"] == defaults.decoder_embed_dim:
        found["decoder_num_heads"] = defaults.decoder_num_heads
    found.update(overrides)
    unknown = [k for k in ("num_heads", "decoder_num_heads") if k not in found]
    if unknown:
        raise ValueError(
            f"the weights do not reveal {unknown} (embed_dim={found['embed_dim']}, depth={found['depth']}, "
            f"decoder_embed_dim={found['decoder_embed_dim']} match no preset); pass them, e.g. num_heads=..."
        )
    if "norm_pix_loss" not in overrides:
        notes.append("norm_pix_loss is not stored in the weights; using False unless you pass norm_pix_loss=True")
    return MAEConfig(**found), notes
