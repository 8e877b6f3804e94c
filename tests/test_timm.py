"""Export to timm's VisionTransformer: same features as our encoder, the MAE fine-tuning pooling, new heads."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import mae
from mae import MAEConfig, MaskedAutoEncoder
from mae.functional import sincos_pos_embed_2d
from mae.io.timm import to_timm

TINY = MAEConfig.from_name("mae_vit_test").to_dict()  # the registered test preset: 32 px, patch 8, 64 wide


def trained_looking(seed: int = 0, **overrides) -> MaskedAutoEncoder:
    """A tiny model whose norms and biases are not at their init values (so a dropped tensor would show)."""
    torch.manual_seed(seed)
    model = MaskedAutoEncoder(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def images(model: MaskedAutoEncoder, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.config.in_chans, *model.config.img_size, generator=torch.Generator().manual_seed(0))


def pre_norm_tokens(model: MaskedAutoEncoder, imgs: torch.Tensor) -> torch.Tensor:
    """Our encoder's tokens just before the final norm, captured at the norm's input."""
    captured = []
    handle = model.norm.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    try:
        model.forward_features(imgs)
    finally:
        handle.remove()
    return captured[0]


def test_token_pool_features_equal_ours():
    model = trained_looking(in_chans=2, img_size=(32, 48))
    vit = to_timm(model, global_pool="token").eval()
    assert isinstance(vit, VisionTransformer) and isinstance(vit.head, nn.Identity)
    imgs = images(model)
    with torch.no_grad():
        ours, theirs = model.forward_features(imgs), vit.forward_features(imgs)
        # float32 rounding of two kernels (a conv against our per-patch linear, thread-count dependent): ~1e-6
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vit(imgs), ours[:, 0], rtol=1e-5, atol=1e-5)  # num_classes=0: the cls feature
    assert all(m.eps == 1e-6 for m in vit.modules() if isinstance(m, nn.LayerNorm))


def test_avg_pool_is_mae_finetuning_layout():
    """Mean of patch tokens -> new fc_norm -> head; the pretrained final norm is not used (as in MAE fine-tuning)."""
    model = trained_looking(seed=1)
    vit = to_timm(model, global_pool="avg", num_classes=7).eval()
    assert isinstance(vit.norm, nn.Identity) and isinstance(vit.fc_norm, nn.LayerNorm)
    assert torch.equal(vit.fc_norm.weight, torch.ones(64)) and torch.equal(vit.fc_norm.bias, torch.zeros(64))
    assert vit.head.out_features == 7 and vit.head.weight.std().item() < 1e-4 and not vit.head.bias.any()
    imgs = images(model)
    with torch.no_grad():
        tokens = pre_norm_tokens(model, imgs)  # (B, 1+L, D)
        torch.testing.assert_close(vit.forward_features(imgs), tokens, rtol=1e-5, atol=1e-5)
        pooled = vit.forward_head(vit.forward_features(imgs), pre_logits=True)
        expected = nn.functional.layer_norm(tokens[:, 1:].mean(1), (64,), eps=1e-6)
        assert torch.allclose(pooled, expected, atol=1e-5)


def test_export_at_another_image_size_regenerates_the_table():
    model = trained_looking(seed=2)
    vit = to_timm(model, img_size=(48, 64), global_pool="token")
    assert vit.patch_embed.grid_size == (6, 8)
    assert torch.equal(vit.pos_embed[0], sincos_pos_embed_2d(64, (6, 8)))
    assert torch.equal(vit.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)
    assert vit.forward_features(torch.randn(1, 3, 48, 64)).shape == (1, 1 + 48, 64)


def test_export_from_a_saved_directory(tmp_path):
    model = trained_looking(seed=3)
    mae.save_pretrained(model, tmp_path)
    vit = to_timm(tmp_path, global_pool="token").eval()
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(images(model)), model.forward_features(images(model)), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"global_pool": "max"}, "global_pool"), ({"num_classes": -1}, "num_classes")]
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        to_timm(trained_looking(), **kwargs)
