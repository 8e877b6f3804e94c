"""Checkpoints: our directories, official release layouts, position tables for other sizes, safety, errors.

Every file is made here from tiny models; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mae
from mae import MAEConfig, MaskedAutoEncoder, create_model
from mae.functional import sincos_pos_embed_2d
from mae.io import (
    UnsafeCheckpointError,
    infer_config,
    load_checkpoint,
    load_pretrained,
    read_checkpoint,
    resize_pos_embed,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = MAEConfig.from_name("mae_vit_test").to_dict()  # the registered test preset: 32 px, patch 8, 64 wide
HEADS = {"num_heads": 4, "decoder_num_heads": 4}  # what shapes cannot tell for the tiny config


def tiny(seed: int = 0, **overrides) -> MaskedAutoEncoder:
    torch.manual_seed(seed)
    return MaskedAutoEncoder(**{**TINY, **overrides})


def same_weights(a: MaskedAutoEncoder, b: MaskedAutoEncoder, keys=None) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in (keys or sa))


def encoder_part(state_dict):
    return {k: v for k, v in state_dict.items() if not (k.startswith("decoder") or k == "mask_token")}


# ---------------------------------------------------------------------------------------------- our directories


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    model = tiny(norm_pix_loss=True, mask_ratio=0.6, img_size=(32, 48))
    mae.save_pretrained(model, tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["format"] == "mae-pytorch" and config["img_size"] == [32, 48]
    back = mae.from_pretrained(tmp_path / "run")
    assert back.config == model.config and same_weights(back, model)


def test_training_run_directory_loads(tmp_path):
    """The trainer's checkpoints hold config.json (maybe with extra keys) + model.safetensors + train_state.pt."""
    model = tiny(seed=1)
    ckpt = tmp_path / "runs" / "x" / "checkpoints" / "last"
    mae.save_pretrained(model, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "step": 1200, "some_future_field": [1, 2]}))
    torch.save({"optimizer": {"state": {}}, "step": 1200}, ckpt / "train_state.pt")
    back, report = load_pretrained(ckpt)
    assert report.format == "mae-pytorch" and not report.missing and not report.skipped
    assert same_weights(back, model)


def test_save_replaces_files_and_refuses_a_file_path(tmp_path):
    mae.save_pretrained(tiny(seed=0), tmp_path)
    mae.save_pretrained(tiny(seed=5), tmp_path)  # overwrite in place
    assert same_weights(mae.from_pretrained(tmp_path), tiny(seed=5))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        mae.save_pretrained(tiny(), tmp_path / "file")


# ---------------------------------------------------------------------------------------------- official layouts


def test_official_full_file_loads_strictly(tmp_path):
    model = tiny(seed=2)
    torch.save({"model": model.state_dict(), "epoch": 799, "args": argparse.Namespace(lr=1.5e-4)}, tmp_path / "f.pth")
    back, report = load_pretrained(tmp_path / "f.pth", strict=True, **HEADS)
    assert report.format == "official" and report.decoder_loaded and not report.missing and not report.skipped
    assert back.config == model.config and same_weights(back, model)


def test_official_encoder_only_file_reports_untrained_decoder(tmp_path):
    model = tiny(seed=3)
    torch.save({"model": encoder_part(model.state_dict())}, tmp_path / "mae_pretrain_tiny.pth")
    with pytest.warns(UserWarning, match="decoder left at initialisation"):
        back = mae.from_pretrained(tmp_path / "mae_pretrain_tiny.pth", **TINY)
    assert same_weights(back, model, keys=encoder_part(model.state_dict()))
    _, report = load_pretrained(tmp_path / "mae_pretrain_tiny.pth", **TINY)
    assert not report.decoder_loaded and "mask_token" in report.missing and "encoder-only" in str(report)
    with pytest.raises(ValueError, match=r"missing keys \['mask_token'"):
        load_pretrained(tmp_path / "mae_pretrain_tiny.pth", strict=True, **TINY)


def test_finetuned_file_loads_encoder_and_skips_head(tmp_path):
    sd = encoder_part(tiny(seed=4).state_dict())
    sd["pos_embed"] = sd["pos_embed"] + 0.01 * torch.randn_like(sd["pos_embed"])  # fine-tuning learns the table
    sd["fc_norm.weight"], sd["fc_norm.bias"] = sd.pop("norm.weight"), sd.pop("norm.bias")
    sd["head.weight"], sd["head.bias"] = torch.randn(10, 64), torch.zeros(10)
    model, report = load_pretrained({"model": sd}, **TINY)
    assert {"fc_norm.weight", "head.weight", "head.bias"} <= set(report.skipped)
    assert "norm.weight" in report.missing and "fine-tuned" in str(report)
    assert torch.equal(model.pos_embed, sd["pos_embed"])  # a learned table is kept as it is at the same size


def test_preset_inferred_from_shapes():
    """A released-style file names no architecture: width, depth, patch, channels, size and heads are inferred."""
    reference = create_model("mae_vit_tiny_patch16", img_size=64, in_chans=1)
    config, notes = infer_config(reference.state_dict())
    assert config == reference.config
    assert any("mae_vit_tiny_patch16" in n for n in notes)
    config, _ = infer_config(encoder_part(reference.state_dict()), norm_pix_loss=True)
    assert config == reference.config.replace(norm_pix_loss=True)  # decoder from the preset, kwargs win


@pytest.mark.parametrize("name", ["mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"])
@pytest.mark.parametrize("part", ["full", "encoder-only"])
def test_released_shapes_infer_the_official_presets(name, part):
    """The release files' shapes (read off meta tensors: no memory) give back the paper's models."""
    sd = create_model(name, device="meta").state_dict()
    config, _ = infer_config(sd if part == "full" else encoder_part(sd))
    assert config == MAEConfig.from_name(name)


def test_heads_are_required_when_no_preset_matches():
    with pytest.raises(ValueError, match=r"\['num_heads', 'decoder_num_heads'\].*pass them"):
        infer_config(tiny(depth=3).state_dict())  # no preset is 64 wide and 3 deep


def test_the_test_preset_is_inferred_from_its_shapes():
    config, _ = infer_config(create_model("mae_vit_test").state_dict())
    assert config == MAEConfig.from_name("mae_vit_test")


def test_wrapper_prefixes_are_removed():
    model = tiny(seed=6)
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    back, report = load_pretrained({"model": wrapped}, **HEADS)
    assert same_weights(back, model) and sum("prefix" in n for n in report.notes) == 2


# ---------------------------------------------------------------------------------------------- other image sizes


@pytest.mark.parametrize("img_size", [(48, 64), (64, 32), 40])
def test_fixed_tables_regenerated_exactly_for_other_sizes(tmp_path, img_size):
    model = tiny(seed=7)
    torch.save({"model": model.state_dict()}, tmp_path / "f.pth")
    back, report = load_pretrained(tmp_path / "f.pth", img_size=img_size, **HEADS)
    grid = back.config.grid_size
    assert torch.equal(back.pos_embed[0], sincos_pos_embed_2d(64, grid))
    assert torch.equal(back.decoder_pos_embed[0], sincos_pos_embed_2d(32, grid))
    assert sum("regenerated" in n for n in report.notes) == 2
    assert same_weights(back, model, keys=["blocks.1.attn.qkv.weight", "decoder_pred.weight"])
    back(torch.randn(1, 3, *back.config.img_size))  # and the model runs at the new size


def test_non_square_directory_grid_is_read_from_its_config(tmp_path):
    mae.save_pretrained(tiny(img_size=(16, 64)), tmp_path)  # (2, 8) grid: L = 16, like a (4, 4) grid
    back, report = load_pretrained(tmp_path, img_size=32)
    assert torch.equal(back.pos_embed[0], sincos_pos_embed_2d(64, (4, 4)))
    assert any("(4, 4) (file: (2, 8))" in n for n in report.notes)


def test_learned_table_resized_bicubically_cls_row_kept():
    sd = tiny(seed=8).state_dict()
    cols = torch.arange(4.0).repeat(4)  # (16,): value = column index, constant down each column
    learned = torch.cat([torch.full((1, 64), 0.5), cols[:, None] * torch.linspace(-1, 1, 64)], 0)[None]
    sd["pos_embed"] = learned
    model, report = load_pretrained(sd, img_size=(24, 64), **HEADS)  # grid (4, 4) -> (3, 8)
    table = model.pos_embed[0]
    assert any("resized bicubically" in n for n in report.notes)
    assert torch.equal(table[0], learned[0, 0])  # cls row kept
    patches = table[1:].reshape(3, 8, 64)
    assert torch.allclose(patches, patches[:1].expand(3, 8, 64))  # rows still identical: axes not swapped
    assert not torch.allclose(patches[0, 0], patches[0, -1])  # but it varies along the width
    reference = F.interpolate(learned[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2), size=(3, 8), mode="bicubic")
    assert torch.allclose(patches, reference[0].permute(1, 2, 0), atol=1e-6)


def test_resize_pos_embed_identity_on_same_grid():
    table = torch.randn(1, 1 + 12, 8)
    assert torch.allclose(resize_pos_embed(table, (3, 4), (3, 4)), table, atol=1e-6)
    with pytest.raises(ValueError, match=r"grid \(4, 4\)"):
        resize_pos_embed(table, (4, 4), (2, 2))


def test_all_zero_table_is_replaced_by_sincos():
    sd = tiny().state_dict()
    sd["decoder_pos_embed"] = torch.zeros_like(sd["decoder_pos_embed"])
    model, report = load_pretrained(sd, **HEADS)
    assert torch.equal(model.decoder_pos_embed[0], sincos_pos_embed_2d(32, (4, 4)))
    assert any("all zeros" in n for n in report.notes)


# ---------------------------------------------------------------------------------------------- safety


class _Payload:
    """Unpickling this would create a marker file: the kind of code a malicious checkpoint runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": tiny().state_dict(), "extra": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load .*evil\.pth.*could run arbitrary code"):
        mae.from_pretrained(tmp_path / "evil.pth", **HEADS)
    assert not marker.exists()
    # The same file inside a directory, named as Hugging Face names pickled weights.
    (tmp_path / "d").mkdir()
    (tmp_path / "evil.pth").rename(tmp_path / "d" / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(tmp_path / "d")
    assert not marker.exists()


def test_safetensors_preferred_over_pickle_in_a_directory(tmp_path):
    marker = tmp_path / "pwned"
    mae.save_pretrained(tiny(seed=9), tmp_path)
    torch.save({"model": tiny(seed=10).state_dict(), "x": _Payload(marker)}, tmp_path / "pytorch_model.bin")
    back = mae.from_pretrained(tmp_path)
    assert same_weights(back, tiny(seed=9)) and not marker.exists()


# ---------------------------------------------------------------------------------------------- errors


def test_missing_and_unexpected_keys_are_named():
    sd = tiny().state_dict()
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.mlp.fc2.bias'\]; unexpected keys "
                                         r"\['blocks.1.extra.weight'\]"):
        load_checkpoint(tiny(), sd)


def test_shape_mismatch_shows_both_shapes():
    with pytest.raises(ValueError, match=r"blocks.0.attn.qkv.weight: file \(192, 64\) vs model \(96, 32\)"):
        load_checkpoint(tiny(embed_dim=32), tiny().state_dict())


@pytest.mark.parametrize("kind", ["truncated-pth", "truncated-safetensors", "text", "empty", "pickled-list"])
def test_unreadable_files_give_clear_errors(tmp_path, kind):
    path = tmp_path / ("f.safetensors" if "safetensors" in kind else "f.pth")
    if kind == "truncated-pth":
        torch.save({"model": tiny().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "truncated-safetensors":
        mae.save_pretrained(tiny(), tmp_path)
        path.write_bytes((tmp_path / "model.safetensors").read_bytes()[:5000])
    elif kind == "text":
        path.write_text("these are not the weights you are looking for\n" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="not a (readable )?(PyTorch|safetensors|model) (checkpoint|file)"):
        read_checkpoint(path)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="no weights file"):
        read_checkpoint(tmp_path)
    with pytest.raises(TypeError, match="path or a state dict"):
        read_checkpoint(3)


def test_foreign_config_json_is_refused(tmp_path):
    mae.save_pretrained(tiny(), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ResNet"], "hidden_sizes": [64]}))
    with pytest.raises(ValueError, match="neither a mae-pytorch config"):
        read_checkpoint(tmp_path)


def test_checkpoints_import_does_not_pull_in_transformers():
    """mae.io must not import transformers (a test-only dependency)."""
    code = "import sys, mae.io, mae.io.hf; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "False"


def test_bfloat16_round_trip_and_meta_device(tmp_path):
    model = tiny(seed=11, dtype=torch.bfloat16)
    mae.save_pretrained(model, tmp_path)
    back = mae.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert back.cls_token.dtype == torch.bfloat16 and same_weights(back, model)
    # On the meta device nothing is copied, but names and shapes are still checked.
    meta, report = load_pretrained(tmp_path, device="meta")
    assert meta.device.type == "meta" and any("meta device" in n for n in report.notes)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_checkpoint(MaskedAutoEncoder(**{**TINY, "embed_dim": 32}, device="meta"), tmp_path)


def test_file_without_the_fixed_tables_uses_the_built_ones():
    model = tiny(seed=12)
    sd = {k: v for k, v in model.state_dict().items() if k not in ("pos_embed", "decoder_pos_embed")}
    back, report = load_pretrained(sd, img_size=48, **HEADS)
    assert torch.equal(back.pos_embed[0], sincos_pos_embed_2d(64, (6, 6)))
    assert any("not in the file" in n for n in report.notes)
    with pytest.raises(ValueError, match=r"missing keys \['pos_embed', 'decoder_pos_embed'\]"):
        load_pretrained(sd, strict=True, **HEADS)
