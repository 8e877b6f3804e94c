"""mae-pretrain --init: continued pretraining from a full MAE checkpoint (official format, our runs), the refusals
(encoder-only without --init-decoder fresh, shapes that do not fit), and what the run records."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_train_run import tiny_args, tiny_config, write_images

from mae import MaskedAutoEncoder
from mae.config import IMAGENET_MEAN, IMAGENET_STD
from mae.io import load_checkpoint
from mae.train import pretrain
from mae.train.cli import main
from mae.train.data import build_data, build_loader, normalize_on_device
from mae.train.report import read_metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Images, and an official-format full checkpoint (``{'model': state_dict}``) of a tiny model trained 4 steps."""
    tmp = tmp_path_factory.mktemp("init")
    data = write_images(tmp / "imgs", 8)
    result = pretrain(tiny_config(tmp, data, epochs=2, name="base", blr=2e-2))
    full = tmp / "mae_full.pth"
    torch.save({"model": result.model.state_dict()}, full)
    encoder_only = tmp / "mae_encoder.pth"
    torch.save({"model": {k: v for k, v in result.model.state_dict().items()
                          if not (k.startswith("decoder") or k == "mask_token")}}, encoder_only)
    return tmp, data, full, encoder_only


def first_batch_loss(model: MaskedAutoEncoder, config) -> float:
    """The loss of ``model`` on the first batch a run of ``config`` trains on (one process, as the run)."""
    loader = build_loader(build_data(config).dataset, batch_size=config.batch_size, num_workers=0, rank=0,
                          world_size=1, seed=config.seed, pin_memory=False)
    loader.set_epoch(0)
    imgs, noise = next(iter(loader))
    with torch.no_grad():
        return float(model(normalize_on_device(imgs, IMAGENET_MEAN, IMAGENET_STD), noise=noise).loss)


def test_init_from_an_official_full_checkpoint_starts_at_its_loss_and_trains_on(trained, tmp_path):
    tmp, data, full, _ = trained
    args = tiny_args(tmp_path, data, "--init", str(full), "--epochs", "3", "--seed", "5", "--blr", "1e-2",
                     "--name", "cont")
    assert main(args) == 0
    run = tmp_path / "runs" / "cont"
    steps = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "step"]
    config = tiny_config(tmp_path, data, seed=5, epochs=3, warmup_epochs=0.0, name="cont")
    from_checkpoint = MaskedAutoEncoder.from_config(config.model_config)
    load_checkpoint(from_checkpoint, full, strict=True)
    torch.manual_seed(5)
    random = MaskedAutoEncoder.from_config(config.model_config)
    expected, random_loss = first_batch_loss(from_checkpoint, config), first_batch_loss(random, config)
    assert steps[0]["step"] == 1 and abs(steps[0]["loss"] - expected) < 1e-4 * max(1.0, expected)
    assert abs(random_loss - expected) > 0.05  # the two starts are told apart
    assert len(steps) == 6 and all(math.isfinite(r["loss"]) for r in steps)
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["config"]["init"] == str(full)
    assert resolved["resolved"]["initialised_from"]["format"] == "official"
    assert resolved["resolved"]["initialised_from"]["decoder"] == "checkpoint"


def test_an_encoder_only_file_needs_a_fresh_decoder_asked_for(trained, tmp_path, capsys):
    tmp, data, _, encoder_only = trained
    assert main(tiny_args(tmp_path, data, "--init", str(encoder_only), "--name", "e")) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no decoder" in err and "--init-decoder fresh" in err and "\n" not in err
    assert not (tmp_path / "runs" / "e").exists()  # refused before anything was written
    assert main(tiny_args(tmp_path, data, "--init", str(encoder_only), "--init-decoder", "fresh", "--name", "e")) == 0
    resolved = json.loads((tmp_path / "runs" / "e" / "train_config.json").read_text())
    assert resolved["resolved"]["initialised_from"]["decoder"] == "fresh"


def test_a_checkpoint_that_does_not_fit_the_flags_is_refused_with_the_load_message(trained, tmp_path, capsys):
    tmp, data, full, _ = trained
    args = tiny_args(tmp_path, data, "--init", str(full), "--model-override", "embed_dim=128", "--name", "w")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "blocks.0.attn.qkv.weight" in err
    # a run folder of ours is taken as its checkpoints/last; another image size resizes the position tables
    assert main(tiny_args(tmp_path, data, "--init", str(tmp / "runs" / "base"), "--img-size", "48",
                          "--name", "r")) == 0


def test_init_from_a_hugging_face_vitmae_folder(trained, tmp_path):
    pytest.importorskip("transformers")
    from mae.io import save_hf

    tmp, data, full, _ = trained
    config = tiny_config(tmp_path, data)
    model = MaskedAutoEncoder.from_config(config.model_config)
    load_checkpoint(model, full, strict=True)
    folder = save_hf(model, tmp_path / "hf")
    assert main(tiny_args(tmp_path, data, "--init", str(folder), "--name", "hf")) == 0
    resolved = json.loads((tmp_path / "runs" / "hf" / "train_config.json").read_text())
    assert resolved["resolved"]["initialised_from"]["format"] == "hf-vitmae"
    assert resolved["resolved"]["initialised_from"]["decoder"] == "checkpoint"
