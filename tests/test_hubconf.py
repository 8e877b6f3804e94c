"""torch.hub entry points, loaded from this checkout with source='local' (never the network)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mae import MaskedAutoEncoder, list_models
from mae.config import MAEConfig

ROOT = str(Path(__file__).resolve().parents[1])
SMALL = {"depth": 2, "decoder_depth": 1, "img_size": 32}  # keep the preset's widths and heads, shrink the rest


def test_every_preset_is_a_hub_entry():
    """torch.hub lists a hubconf's public callables (torch.hub.list itself only reads GitHub repositories)."""
    spec = importlib.util.spec_from_file_location("hubconf_under_test", Path(ROOT) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")]
    assert sorted(entries) == list_models()
    assert "safetensors" in hubconf.dependencies


@pytest.mark.parametrize("name", ["mae_vit_base_patch16", "mae_vit_huge_patch14"])
def test_load_builds_the_preset_on_meta(name):
    """The documented call; on the meta device no memory is used, so even ViT-H builds instantly."""
    model = torch.hub.load(ROOT, name, source="local", device="meta")
    assert isinstance(model, MaskedAutoEncoder) and model.device.type == "meta"
    assert model.config == MAEConfig.from_name(name)


def test_pretrained_loads_a_local_file(tmp_path):
    torch.manual_seed(0)
    reference = torch.hub.load(ROOT, "mae_vit_tiny_patch16", source="local", **SMALL)
    torch.save({"model": reference.state_dict()}, tmp_path / "tiny.pth")
    for key in ("pretrained", "checkpoint"):
        model = torch.hub.load(ROOT, "mae_vit_tiny_patch16", source="local", **{key: tmp_path / "tiny.pth"}, **SMALL)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                     strict=True))


def test_pretrained_file_must_fit_the_named_preset(tmp_path):
    torch.save({"model": torch.hub.load(ROOT, "mae_vit_tiny_patch16", source="local", **SMALL).state_dict()},
               tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="shape mismatch"):
        torch.hub.load(ROOT, "mae_vit_small_patch16", source="local", pretrained=tmp_path / "tiny.pth", **SMALL)


def test_pretrained_true_is_refused_instead_of_downloading():
    with pytest.raises(ValueError, match="never does"):
        torch.hub.load(ROOT, "mae_vit_base_patch16", source="local", pretrained=True, device="meta")
