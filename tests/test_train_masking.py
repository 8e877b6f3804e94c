"""``mae-pretrain --masking random|block|grid``: the strategy reaches the model, the samples and train_config.json."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_run import TINY_MODEL, tiny_args, tiny_config

import mae
import mae.functional as MF
from mae.train import TrainConfig
from mae.train.cli import main
from mae.train.data import build_data


def test_masking_grid_trains_and_is_recorded(tmp_path):
    assert main(tiny_args(tmp_path, None, "--repeat", "1", "--masking", "grid")) == 0
    run = tmp_path / "runs" / "t"
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["config"]["masking"] == "grid"
    model = mae.from_pretrained(run / "checkpoints" / "last")
    assert model.config.masking == "grid"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x and torch.isfinite(torch.tensor(x["loss"])) for x in lines)


@pytest.mark.parametrize("masking", ["grid", "block"])
def test_samples_carry_the_strategys_masks(tmp_path, masking):
    """The noise each sample brings makes the model's argsort masking remove exactly the strategy's patches."""
    cfg = tiny_config(tmp_path, None, repeat=1, masking=masking)
    samples = build_data(cfg).dataset
    noise = torch.stack([samples[i][1] for i in range(4)])  # (4, L)
    x = torch.zeros(4, cfg.model_config.num_patches, 1)
    mask = MF.random_masking(x, cfg.mask_ratio, noise=noise).mask.reshape(4, 4, 4)  # (B, gh, gw) 1 = removed
    assert torch.all(mask.sum((1, 2)) == 12)  # 16 patches, 0.75 removed
    if masking == "grid":  # one patch kept in every 2x2 cell
        cells = mask.reshape(4, 2, 2, 2, 2).sum((2, 4))
        assert torch.all(cells == 3)
    assert torch.equal(samples[0][1], samples[0][1])  # a pure function of (seed, epoch, index): resume stays exact


def test_masking_is_checked_and_has_its_own_flag(tmp_path, capsys):
    with pytest.raises(ValueError, match="grid masking .* mask_ratio 0.75"):
        tiny_config(tmp_path, None, masking="grid", mask_ratio=0.6)
    with pytest.raises(ValueError, match="masking must be one of"):
        TrainConfig(masking="checkerboard")
    with pytest.raises(ValueError, match=r"model_overrides must not set \['masking'\]"):
        TrainConfig(model_overrides={**TINY_MODEL, "masking": "grid"})
    assert main(tiny_args(tmp_path, None, "--masking", "grid", "--mask-ratio", "0.5")) == 2
    assert "grid masking" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
