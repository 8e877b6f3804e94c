"""Parity with Hugging Face ViTMAE (transformers, a test-only dependency): weights both ways, same outputs.

Everything is built here with random weights on tiny configs; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch

import mae
from mae import MAEConfig, MaskedAutoEncoder
from mae.functional import sincos_pos_embed_2d
from mae.io import load_pretrained
from mae.io.hf import config_from_hf, config_to_hf, hf_to_mae_state_dict, mae_to_hf_state_dict, save_hf

transformers = pytest.importorskip("transformers")
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel  # noqa: E402
from transformers.models.vit_mae import modeling_vit_mae  # noqa: E402

TINY = MAEConfig.from_name("mae_vit_test").to_dict()  # the registered test preset: 32 px, patch 8, 64 wide
TOL = 1e-5


def ours(seed: int = 0, **overrides) -> MaskedAutoEncoder:
    torch.manual_seed(seed)
    model = MaskedAutoEncoder(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # biases and LayerNorm affines away from their init, so a swapped key cannot hide
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_config(**overrides) -> ViTMAEConfig:
    return ViTMAEConfig(**{**config_to_hf(ours().config), **overrides})


def inputs(model: MaskedAutoEncoder, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.randn(3, 3, 32, 32, generator=gen)
    noise = torch.rand(3, model.config.num_patches, generator=gen)
    return imgs, noise


def in_memory_layout(hf_model) -> str:
    """transformers 5 names its modules q_proj/k_proj/...; transformers 4 uses the Hub's names."""
    return "modular" if any(".q_proj." in k for k in hf_model.state_dict()) else "hub"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_same_pretraining(mine: MaskedAutoEncoder, hf: ViTMAEForPreTraining) -> float:
    imgs, noise = inputs(mine)
    with torch.no_grad():
        loss, pred, mask = mine(imgs, noise=noise)
        out = hf(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask), "same noise must give the same mask"
    worst = max(max_diff(pred, out.logits), max_diff(loss, out.loss))
    assert worst <= TOL, worst
    return worst


def test_position_table_layout_matches_transformers():
    """HF builds its tables with its own function; the result must be our table, so no reordering is needed."""
    for dim, side in ((64, 4), (32, 6)):
        if hasattr(modeling_vit_mae, "build_2d_sinusoidal_position_embedding"):  # transformers 5
            table = modeling_vit_mae.build_2d_sinusoidal_position_embedding(side, side, embed_dim=dim, cls_token=True)
            half = dim // 2
            table = torch.cat([table[..., half:], table[..., :half]], dim=-1)  # as ViTMAE's initialize_weights does
        else:  # transformers 4
            table = torch.from_numpy(modeling_vit_mae.get_2d_sincos_pos_embed(dim, side, add_cls_token=True))
        assert max_diff(table, sincos_pos_embed_2d(dim, side)) < 1e-6


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_ours_to_hf_same_loss_mask_and_pixels(norm_pix_loss, attention):
    """With SDPA both sides run the same kernels (measured: bit-identical); HF's eager attention differs ~1e-6."""
    mine = ours(norm_pix_loss=norm_pix_loss)
    config = hf_config(norm_pix_loss=norm_pix_loss)
    config._attn_implementation = attention
    hf = ViTMAEForPreTraining(config).eval()
    hf.load_state_dict(mae_to_hf_state_dict(mine.state_dict(), layout=in_memory_layout(hf)), strict=True)
    assert_same_pretraining(mine, hf)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_hf_to_ours_same_loss_mask_and_pixels(tmp_path, norm_pix_loss):
    torch.manual_seed(3)
    hf = ViTMAEForPreTraining(hf_config(norm_pix_loss=norm_pix_loss)).eval()
    with torch.no_grad():  # every tensor random, the position tables included: they must travel as they are
        for name, p in hf.named_parameters():
            scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0  # LayerNorm gains near 1
            p.copy_(scale + torch.randn_like(p) * 0.2)
    hf.save_pretrained(tmp_path)  # transformers' own writer: config.json + model.safetensors
    mine, report = load_pretrained(tmp_path)
    assert report.format == "hf-vitmae" and not report.missing and not report.skipped
    assert mine.config.norm_pix_loss is norm_pix_loss and mine.config.num_heads == 4
    assert_same_pretraining(mine, hf)


def test_vitmae_model_hidden_state_equals_our_latent():
    mine = ours()
    hf = ViTMAEModel(hf_config()).eval()
    sd = mae_to_hf_state_dict(mine.state_dict(), layout=in_memory_layout(hf), encoder_only=True)
    hf.load_state_dict(sd, strict=True)
    imgs, noise = inputs(mine)
    with torch.no_grad():
        latent, mask, ids_restore = mine.encoder(imgs, noise=noise)
        out = hf(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask) and torch.equal(ids_restore, out.ids_restore)
    assert max_diff(latent, out.last_hidden_state) <= TOL


@pytest.mark.parametrize("encoder_only", [False, True])
def test_save_hf_loads_in_transformers(tmp_path, encoder_only):
    """Our writer uses the Hub's key names; transformers must load them without a missing or unused key."""
    mine = ours()
    save_hf(mine, tmp_path, encoder_only=encoder_only)
    cls = ViTMAEModel if encoder_only else ViTMAEForPreTraining
    hf, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert json.loads((tmp_path / "config.json").read_text())["layer_norm_eps"] == 1e-6
    if encoder_only:
        # Our reader sees a ViTMAEModel directory: encoder loaded, decoder reported as untrained.
        back, report = load_pretrained(tmp_path)
        assert not report.decoder_loaded
        assert torch.equal(back.state_dict()["blocks.1.attn.qkv.weight"], mine.state_dict()["blocks.1.attn.qkv.weight"])
    else:
        assert_same_pretraining(mine, hf.eval())


@pytest.mark.parametrize("layout", ["hub", "modular"])
def test_key_conversion_round_trip_is_exact(layout):
    sd = ours().state_dict()
    back, skipped = hf_to_mae_state_dict(mae_to_hf_state_dict(sd, layout=layout))
    assert skipped == [] and back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_pytorch_model_bin_directory(tmp_path):
    """Older HF directories hold pytorch_model.bin; it is read (safely) like model.safetensors."""
    mine = ours()
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(mine.config)))
    torch.save(mae_to_hf_state_dict(mine.state_dict()), tmp_path / "pytorch_model.bin")
    back = mae.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), mine.state_dict().values(), strict=True))


def test_hf_state_dict_without_config_is_inferred_from_shapes():
    mine = ours()
    sd = mae_to_hf_state_dict(mine.state_dict(), layout="modular")
    back, report = load_pretrained(sd, num_heads=4, decoder_num_heads=4)
    assert report.format == "hf-vitmae" and back.config == mine.config


def test_config_mapping_round_trip_and_eps_default():
    cfg = ours(norm_pix_loss=True, mask_ratio=0.6).config
    kwargs, notes = config_from_hf(config_to_hf(cfg))
    assert kwargs == {k: getattr(cfg, k) for k in kwargs} and notes == []
    # transformers' default eps (1e-12) is what the Hub copies carry: accepted, and said so.
    _, notes = config_from_hf(hf_config(layer_norm_eps=1e-12).to_dict())
    assert any("1e-12" in n for n in notes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "vit"}, "model_type='vit'"),
        ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
        ({"qkv_bias": False}, "qkv_bias=False"),
        ({"layer_norm_eps": 1e-5}, "layer_norm_eps=1e-05"),
        ({"decoder_intermediate_size": 100}, "one mlp_ratio"),
    ],
)
def test_configs_that_are_not_this_vitmae_are_refused(tmp_path, change, message):
    mine = ours()
    save_hf(mine, tmp_path)
    config = {**json.loads((tmp_path / "config.json").read_text()), **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        mae.from_pretrained(tmp_path)


def test_unknown_hf_keys_are_an_error_not_silently_dropped():
    sd = mae_to_hf_state_dict(ours().state_dict())
    sd["classifier.weight"] = torch.zeros(10, 64)
    with pytest.raises(ValueError, match=r"unexpected keys \['classifier.weight'\]"):
        load_pretrained(sd, num_heads=4, decoder_num_heads=4)
