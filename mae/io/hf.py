"""Hugging Face ViTMAE <-> mae-pytorch: state-dict keys (both ways) and configs.

Hugging Face stores the same network under other names and with separate query/key/value projections where we
(and the MAE release) keep one fused ``qkv`` Linear whose rows are [q; k; v]. Two HF key layouts exist:

* ``"hub"``: the layout of the ViTMAE files on the Hugging Face Hub (transformers 4.x), e.g.
  ``vit.encoder.layer.0.attention.attention.query.weight``. transformers 5 still reads it (it renames on load).
* ``"modular"``: the in-memory layout of transformers 5, e.g. ``vit.layers.0.attention.q_proj.weight``.

``ViTMAEForPreTraining`` prefixes the encoder with ``vit.`` and the decoder with ``decoder.``; ``ViTMAEModel`` is
the encoder alone, without the prefix. Both are read; ``mae_to_hf_state_dict`` writes either.
The position tables need no reordering: HF's tables are laid out [x half | y half] like ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from .._checks import to_pair
from ..config import MAEConfig
from .save import write_weights_dir

__all__ = [
    "config_from_hf",
    "config_to_hf",
    "hf_to_mae_state_dict",
    "is_hf_state_dict",
    "mae_to_hf_state_dict",
    "save_hf",
]

# Non-block parameters: our (official) name -> HF name inside ViTMAEForPreTraining.
_TOP_LEVEL = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}
_TOP_LEVEL_FROM_HF = {hf: ours for ours, hf in _TOP_LEVEL.items()}

# Inside one transformer block: our module -> HF module, per layout. qkv is handled apart (fused vs split).
_BLOCK = {
    "hub": {
        "norm1": "layernorm_before",
        "attn.proj": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    },
    "modular": {
        "norm1": "layernorm_before",
        "attn.proj": "attention.o_proj",
        "norm2": "layernorm_after",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    },
}
_QKV = {
    "hub": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    "modular": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
}
_ENCODER_BLOCKS = {"hub": "vit.encoder.layer", "modular": "vit.layers"}
_DECODER_BLOCKS = "decoder.decoder_layers"

# HF module name inside a block -> (our module name, index in [q, k, v] or None), both layouts merged.
_BLOCK_FROM_HF: dict[str, tuple[str, int | None]] = {}
for _layout in ("hub", "modular"):
    _BLOCK_FROM_HF.update({hf: (ours, None) for ours, hf in _BLOCK[_layout].items()})
    _BLOCK_FROM_HF.update({hf: ("attn.qkv", i) for i, hf in enumerate(_QKV[_layout])})
# transformers 5.x writes decoder blocks as "decoder.decoder_encoder.layer.N" (its "encoder.layer" <-> "layers" rename
# applied backwards inside "decoder_layers"); it reads them back, so we do too.
_HF_BLOCK_KEY = re.compile(
    r"^(vit\.encoder\.layer|vit\.layers|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$"
)

Layout = Literal["hub", "modular"]


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True if the keys look like a Hugging Face ViTMAE (``ViTMAEForPreTraining`` or ``ViTMAEModel``)."""
    return any(
        k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.", "decoder.decoder_")) for k in state_dict
    )


def hf_to_mae_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a Hugging Face ViTMAE state dict to our (official) keys, fusing q/k/v into ``qkv``.

    Args:
        state_dict: keys of ``ViTMAEForPreTraining`` or ``ViTMAEModel``, either HF layout.

    Returns:
        ``(state_dict, skipped)``: the converted tensors, and the HF keys that have no counterpart here
        (e.g. a classifier), left out and listed so the caller can report them.
    """
    # ViTMAEModel files carry the encoder without the "vit." prefix; give it back so one table serves both.
    if not any(k.startswith(("vit.", "decoder.")) for k in state_dict):
        state_dict = {f"vit.{k}": v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    qkv_parts: dict[str, dict[int, Tensor]] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        if key in _TOP_LEVEL_FROM_HF:
            out[_TOP_LEVEL_FROM_HF[key]] = value
            continue
        match = _HF_BLOCK_KEY.match(key)
        if match is None or match.group(3) not in _BLOCK_FROM_HF:
            skipped.append(key)
            continue
        stack, index, module, kind = match.groups()
        prefix = "decoder_blocks" if stack.startswith("decoder.") else "blocks"
        ours, part = _BLOCK_FROM_HF[module]
        name = f"{prefix}.{index}.{ours}.{kind}"
        if part is None:
            out[name] = value
        else:
            qkv_parts.setdefault(name, {})[part] = value
    for name, parts in qkv_parts.items():
        if len(parts) != 3:
            absent = [("query", "key", "value")[i] for i in range(3) if i not in parts]
            raise ValueError(f"Hugging Face state dict lacks the {absent} projection(s) needed to build {name!r}")
        out[name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)  # (3D, D) or (3D,): rows [q; k; v]
    return out, sorted(skipped)


def mae_to_hf_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    layout: Layout = "hub",
    encoder_only: bool = False,
) -> dict[str, Tensor]:
    """Rename our (official) state dict to Hugging Face ViTMAE keys, splitting ``qkv`` into q, k, v.

    Args:
        state_dict: a ``MaskedAutoEncoder`` state dict (or an official release file's ``'model'``).
        layout: ``"hub"`` (the Hub files' names, read by transformers 4 and 5) or ``"modular"`` (transformers 5's
            in-memory names, for ``load_state_dict`` on a model built in memory).
        encoder_only: produce ``ViTMAEModel`` keys (no ``vit.`` prefix, no decoder) instead of
            ``ViTMAEForPreTraining`` keys.

    Returns:
        A new dict of tensors (the same tensor objects, or slices of ``qkv``, made contiguous).
    """
    if layout not in _BLOCK:
        raise ValueError(f"layout must be 'hub' or 'modular', got {layout!r}")
    block_key = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = value
            continue
        match = block_key.match(key)
        if match is None or (match.group(3) != "attn.qkv" and match.group(3) not in _BLOCK[layout]):
            unknown.append(key)
            continue
        stack, index, module, kind = match.groups()
        prefix = _ENCODER_BLOCKS[layout] if stack == "blocks" else _DECODER_BLOCKS
        if module == "attn.qkv":
            for hf_module, part in zip(_QKV[layout], value.chunk(3, dim=0), strict=True):
                out[f"{prefix}.{index}.{hf_module}.{kind}"] = part.contiguous()
        else:
            out[f"{prefix}.{index}.{_BLOCK[layout][module]}.{kind}"] = value
    if unknown:
        raise ValueError(f"state_dict has keys with no Hugging Face ViTMAE counterpart: {sorted(unknown)}")
    if encoder_only:
        out = {k[len("vit."):]: v for k, v in out.items() if k.startswith("vit.")}
    return out


# ---------------------------------------------------------------------------------------------- configs

# transformers' ViTMAEConfig default eps. The released MAE weights were trained with 1e-6; the Hub's converted copies
# keep this default in their config. The two differ by far less than float32 noise on unit-variance activations.
_HF_DEFAULT_EPS = 1e-12
_OUR_EPS = 1e-6


def config_from_hf(hf_config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Map a Hugging Face ViTMAE ``config.json`` to ``MAEConfig`` keyword arguments.

    Args:
        hf_config: the parsed ``config.json`` (or ``ViTMAEConfig.to_dict()``).

    Returns:
        ``(kwargs, notes)``: the ``MAEConfig`` fields, and remarks worth showing in a load report.

    Raises:
        ValueError: the config is not a ViTMAE, or describes something this model cannot represent
            (another activation, no qkv bias, a LayerNorm eps other than 1e-6 or transformers' default 1e-12,
            a decoder MLP ratio different from the encoder's).
    """
    model_type = hf_config.get("model_type")
    if model_type != "vit_mae":
        raise ValueError(
            f"the Hugging Face config has model_type={model_type!r}, expected 'vit_mae' (a ViTMAE); "
            "only ViTMAEForPreTraining / ViTMAEModel checkpoints can be converted"
        )

    def get(name: str, default: Any) -> Any:
        return hf_config.get(name, default)

    notes: list[str] = []
    act = get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(
            f"the Hugging Face config has hidden_act={act!r}; this model uses the exact (erf) GELU, 'gelu', only"
        )
    if get("qkv_bias", True) is not True:
        raise ValueError(f"the Hugging Face config has qkv_bias={get('qkv_bias', True)!r}; this model needs True")
    eps = float(get("layer_norm_eps", _HF_DEFAULT_EPS))
    if eps == _HF_DEFAULT_EPS:
        notes.append(
            "the Hugging Face config says layer_norm_eps=1e-12 (transformers' default); this model uses 1e-6, the "
            "value the MAE weights were trained with"
        )
    elif eps != _OUR_EPS:
        raise ValueError(
            f"the Hugging Face config has layer_norm_eps={eps!r}; this model supports 1e-6 (MAE) or 1e-12 "
            "(transformers' default, treated as 1e-6)"
        )
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if get(name, 0.0):
            notes.append(f"{name}={get(name, 0.0)} is ignored: this model has no dropout (MAE pretraining uses none)")

    hidden, decoder_hidden = int(get("hidden_size", 768)), int(get("decoder_hidden_size", 512))
    intermediate = int(get("intermediate_size", 3072))
    decoder_intermediate = int(get("decoder_intermediate_size", 2048))
    mlp_ratio = intermediate / hidden
    # One mlp_ratio serves both stacks here, and the blocks size their MLP as int(width * mlp_ratio).
    if int(hidden * mlp_ratio) != intermediate or int(decoder_hidden * mlp_ratio) != decoder_intermediate:
        raise ValueError(
            f"the Hugging Face config has intermediate_size/hidden_size = {intermediate}/{hidden} but "
            f"decoder_intermediate_size/decoder_hidden_size = {decoder_intermediate}/{decoder_hidden}; this model "
            "uses one mlp_ratio for the encoder and the decoder"
        )
    img_size = get("image_size", 224)
    patch_size = get("patch_size", 16)
    kwargs = {
        "img_size": to_pair(img_size, "image_size"),
        "patch_size": to_pair(patch_size, "patch_size"),
        "in_chans": int(get("num_channels", 3)),
        "embed_dim": hidden,
        "depth": int(get("num_hidden_layers", 12)),
        "num_heads": int(get("num_attention_heads", 12)),
        "decoder_embed_dim": decoder_hidden,
        "decoder_depth": int(get("decoder_num_hidden_layers", 8)),
        "decoder_num_heads": int(get("decoder_num_attention_heads", 16)),
        "mlp_ratio": mlp_ratio,
        "norm_pix_loss": bool(get("norm_pix_loss", False)),
        "mask_ratio": float(get("mask_ratio", 0.75)),
    }
    return kwargs, notes


def config_to_hf(config: MAEConfig, *, architecture: str = "ViTMAEForPreTraining") -> dict[str, Any]:
    """A Hugging Face ``ViTMAEConfig`` dict describing the same network (layer_norm_eps 1e-6, as trained).

    Raises:
        ValueError: non-square patches or images, which transformers' ViTMAE does not support.
    """
    if not isinstance(config, MAEConfig):
        raise TypeError(f"config must be an MAEConfig, got {type(config).__name__}")
    (H, W), (ph, pw) = config.img_size, config.patch_size
    if ph != pw or H != W:
        raise ValueError(
            f"transformers' ViTMAE needs square images and patches; got img_size={config.img_size}, "
            f"patch_size={config.patch_size}"
        )
    return {
        "architectures": [architecture],
        "model_type": "vit_mae",
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "intermediate_size": int(config.embed_dim * config.mlp_ratio),
        "decoder_hidden_size": config.decoder_embed_dim,
        "decoder_num_hidden_layers": config.decoder_depth,
        "decoder_num_attention_heads": config.decoder_num_heads,
        "decoder_intermediate_size": int(config.decoder_embed_dim * config.mlp_ratio),
        "image_size": H,
        "patch_size": ph,
        "num_channels": config.in_chans,
        "mask_ratio": config.mask_ratio,
        "norm_pix_loss": config.norm_pix_loss,
        "layer_norm_eps": _OUR_EPS,
        "qkv_bias": True,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
    }


def save_hf(model: Any, directory: str | Path, *, layout: Layout = "hub", encoder_only: bool = False,
            overwrite: bool = False) -> Path:
    """Write ``model`` as a Hugging Face ViTMAE directory: ``config.json`` + ``model.safetensors``.

    ``transformers.ViTMAEForPreTraining.from_pretrained(directory)`` (or ``ViTMAEModel`` with ``encoder_only``)
    then loads it, offline. Existing files are replaced only once the new ones are completely written.

    Args:
        model: a ``MaskedAutoEncoder``.
        directory: created if needed.
        layout: key names, see ``mae_to_hf_state_dict`` ("hub" loads in transformers 4 and 5).
        encoder_only: write a ``ViTMAEModel`` (encoder only).
        overwrite: replace a ``config.json``/``model.safetensors`` that mae-pytorch did not write (``save``).
    """
    architecture = "ViTMAEModel" if encoder_only else "ViTMAEForPreTraining"
    config = config_to_hf(model.config, architecture=architecture)  # write_weights_dir adds our "format" tag
    tensors = mae_to_hf_state_dict(model.state_dict(), layout=layout, encoder_only=encoder_only)
    return write_weights_dir(directory, config, tensors, overwrite=overwrite)
