"""Presets: every named model has the official state-dict layout, shapes and parameter counts.

Models are built on the meta device, so even ViT-H costs no memory and no time. The expected key list is written
here from DESIGN.md section 2, not read from the model.
"""

from __future__ import annotations

import pytest
import torch

from mae import MAEConfig, MaskedAutoEncoder, create_model, list_models

# name -> (patch, D, depth, heads, Dd, decoder depth, decoder heads); official sizes from the paper / DESIGN.md.
ARCH = {
    "mae_vit_base_patch16": (16, 768, 12, 12, 512, 8, 16),
    "mae_vit_large_patch16": (16, 1024, 24, 16, 512, 8, 16),
    "mae_vit_huge_patch14": (14, 1280, 32, 16, 512, 8, 16),
    "mae_vit_tiny_patch16": (16, 192, 12, 3, 128, 4, 4),
    "mae_vit_small_patch16": (16, 384, 12, 6, 256, 4, 8),
}

# DESIGN.md section 3: (total, trainable) at 224 px; trainable leaves out the two frozen sin-cos tables.
OFFICIAL_COUNTS = {
    "mae_vit_base_patch16": (111_907_840, 111_655_680),
    "mae_vit_large_patch16": (329_541_888, 329_239_296),
    "mae_vit_huge_patch14": (657_074_508, 656_613_964),
}

BLOCK_PARTS = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]


def expected_shapes(name: str, img: int = 224, C: int = 3) -> dict[str, tuple[int, ...]]:
    """The official key -> shape map, in the official order."""
    p, D, depth, _, Dd, ddepth, _ = ARCH[name]
    L, P = (img // p) ** 2, p * p * C

    def block(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
        shapes = {"norm1": (d,), "attn.qkv": (3 * d, d), "attn.proj": (d, d), "norm2": (d,),
                  "mlp.fc1": (4 * d, d), "mlp.fc2": (d, 4 * d)}
        out = {}
        for part in BLOCK_PARTS:
            w = shapes[part]
            out[f"{prefix}.{part}.weight"] = w
            out[f"{prefix}.{part}.bias"] = (w[0],)
        return out

    keys = {
        "cls_token": (1, 1, D),
        "pos_embed": (1, 1 + L, D),
        "mask_token": (1, 1, Dd),
        "decoder_pos_embed": (1, 1 + L, Dd),
        "patch_embed.proj.weight": (D, C, p, p),
        "patch_embed.proj.bias": (D,),
    }
    for i in range(depth):
        keys |= block(f"blocks.{i}", D)
    keys |= {"norm.weight": (D,), "norm.bias": (D,), "decoder_embed.weight": (Dd, D), "decoder_embed.bias": (Dd,)}
    for i in range(ddepth):
        keys |= block(f"decoder_blocks.{i}", Dd)
    keys |= {"decoder_norm.weight": (Dd,), "decoder_norm.bias": (Dd,), "decoder_pred.weight": (P, Dd),
             "decoder_pred.bias": (P,)}
    return keys


def count_by_formula(name: str, img: int = 224, C: int = 3) -> tuple[int, int]:
    """Parameter count from the architecture alone: a block of width d has 12 d^2 + 13 d parameters."""
    p, D, depth, _, Dd, ddepth, _ = ARCH[name]
    L, P = (img // p) ** 2, p * p * C
    block = lambda d: 12 * d * d + 13 * d  # noqa: E731  qkv 3d^2+3d, proj d^2+d, mlp 8d^2+5d, two norms 4d
    frozen = (1 + L) * D + (1 + L) * Dd
    total = (C * p * p * D + D) + D + depth * block(D) + 2 * D + (D * Dd + Dd) + Dd + ddepth * block(Dd) + 2 * Dd
    total += Dd * P + P + frozen
    return total, total - frozen


def test_list_models_names_every_preset():
    assert list_models() == sorted([*ARCH, "mae_vit_demo_patch4", "mae_vit_test"])


def test_the_demo_preset_is_the_default_runs_model():
    """Ours (issue 10): 64 px, a 16x16 grid of 4 px patches, 128 wide x 4 blocks, decoder 128 x 2."""
    cfg = MAEConfig.from_name("mae_vit_demo_patch4")
    assert (cfg.img_size, cfg.patch_size, cfg.grid_size) == ((64, 64), (4, 4), (16, 16))
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.decoder_embed_dim, cfg.decoder_depth) == (128, 4, 4, 128, 2)


def test_the_test_preset_is_the_suite_size():
    """The registered test model (timm's ``test_vit`` idea): 32 px, 16 patches of 8x8, 64 wide, 2 + 2 blocks."""
    cfg = MAEConfig.from_name("mae_vit_test")
    assert (cfg.img_size, cfg.patch_size, cfg.num_patches) == ((32, 32), (8, 8), 16)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.decoder_embed_dim, cfg.decoder_depth) == (64, 2, 4, 32, 2)


@pytest.mark.parametrize("name", sorted(ARCH))
def test_preset_state_dict_has_official_keys_and_shapes(name):
    model = create_model(name, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = expected_shapes(name)
    assert list(shapes) == list(expected)  # same keys, same order
    assert shapes == expected
    assert not list(model.buffers())  # everything the release saves is a parameter


@pytest.mark.parametrize("name", sorted(ARCH))
def test_preset_architecture(name):
    p, D, depth, heads, Dd, ddepth, dheads = ARCH[name]
    cfg = create_model(name, device="meta").config
    assert (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads) == ((p, p), D, depth, heads)
    assert (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads) == (Dd, ddepth, dheads)
    assert (cfg.img_size, cfg.in_chans, cfg.mlp_ratio, cfg.mask_ratio, cfg.norm_pix_loss) == (
        (224, 224), 3, 4.0, 0.75, False)
    assert cfg == MAEConfig.from_name(name)


@pytest.mark.parametrize("name", sorted(ARCH))
def test_preset_parameter_counts(name):
    model = create_model(name, device="meta")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == count_by_formula(name)
    if name in OFFICIAL_COUNTS:
        assert (total, trainable) == OFFICIAL_COUNTS[name]


def test_small_presets_are_small():
    tiny = sum(p.numel() for p in create_model("mae_vit_tiny_patch16", device="meta").parameters())
    small = sum(p.numel() for p in create_model("mae_vit_small_patch16", device="meta").parameters())
    assert tiny < 10_000_000 < small < 30_000_000


def test_create_model_overrides_apply():
    model = create_model("mae_vit_base_patch16", device="meta", img_size=(224, 320), in_chans=1,
                         norm_pix_loss=True, mask_ratio=0.6, decoder_depth=2)
    cfg = model.config
    assert cfg.img_size == (224, 320) and cfg.in_chans == 1 and cfg.norm_pix_loss and cfg.mask_ratio == 0.6
    assert cfg.grid_size == (14, 20) and cfg.num_patches == 280
    assert model.pos_embed.shape == (1, 281, 768)
    assert model.patch_embed.proj.weight.shape == (768, 1, 16, 16)
    assert model.decoder_pred.weight.shape == (256, 512)
    assert len(model.decoder_blocks) == 2
    # Overrides leave the preset itself untouched.
    assert create_model("mae_vit_base_patch16", device="meta").config.img_size == (224, 224)


def test_create_model_real_device_and_dtype():
    model = create_model("mae_vit_tiny_patch16", img_size=32, depth=2, decoder_depth=1, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    loss, pred, mask = model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert pred.shape == (1, 4, 768) and mask.sum() == 3  # L = 4 patches, K = int(4 * 0.25) = 1


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="mae_vit_gigantic") as info:
        create_model("mae_vit_gigantic")
    for name in ARCH:
        assert name in str(info.value)


def test_unknown_override_lists_the_valid_fields():
    with pytest.raises(TypeError, match="emb_size") as info:
        create_model("mae_vit_base_patch16", device="meta", emb_size=768)
    assert "embed_dim" in str(info.value)


def test_config_is_frozen_and_round_trips():
    cfg = MAEConfig.from_name("mae_vit_huge_patch14", img_size=(448, 224))
    with pytest.raises(AttributeError):
        cfg.embed_dim = 8  # type: ignore[misc]
    assert MAEConfig(**cfg.to_dict()) == cfg
    assert cfg.grid_size == (32, 16) and cfg.num_patches == 512 and cfg.patch_dim == 14 * 14 * 3
    model = MaskedAutoEncoder.from_config(cfg, device="meta")
    assert model.config == cfg
