"""Unit tests of the pretraining pieces: schedule, optimizer groups, config checks, checkpoints (data: test_datasets)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mae import MAEConfig, create_model
from mae.train import TrainConfig, lr_at_step, param_groups, scaled_lr
from mae.train.engine import build_optimizer
from mae.train.run import (
    MODEL_FILE,
    STATE_FILE,
    capture_rng_state,
    read_train_checkpoint,
    restore_rng_state,
    write_train_checkpoint,
)

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=4)


def tiny_model():
    torch.manual_seed(0)
    return create_model("mae_vit_tiny_patch16", **TINY)


# ---------------------------------------------------------------------------------------------- schedule


def test_lr_schedule_values():
    kw = dict(base_lr=1.0, total_steps=10, warmup_steps=4, min_lr=0.1)
    # warm-up: (step + 1) / warmup, reaching the peak on the last warm-up step
    assert [lr_at_step(s, **kw) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # cosine: peak at step 4, halfway (step 7) = mean of peak and floor, floor at the end and beyond
    assert lr_at_step(4, **kw) == pytest.approx(1.0)
    assert lr_at_step(7, **kw) == pytest.approx(0.55)
    assert lr_at_step(5, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 6)))
    assert lr_at_step(10, **kw) == pytest.approx(0.1)
    assert lr_at_step(12, **kw) == pytest.approx(0.1)
    # no warm-up: cosine from the first step
    assert lr_at_step(0, base_lr=2.0, total_steps=4, warmup_steps=0) == pytest.approx(2.0)
    assert lr_at_step(2, base_lr=2.0, total_steps=4, warmup_steps=0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at_step(0, base_lr=1.0, total_steps=3, warmup_steps=5)
    with pytest.raises(ValueError, match="step"):
        lr_at_step(-1, base_lr=1.0, total_steps=3, warmup_steps=0)


def test_scaled_lr_is_the_linear_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # the paper's ViT-L setting
    assert scaled_lr(1e-3, 128) == pytest.approx(5e-4)


# ---------------------------------------------------------------------------------------------- optimizer


def test_param_groups_follow_the_paper():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    # frozen sin-cos tables never enter the optimizer
    assert "pos_embed" not in decayed | not_decayed and "decoder_pos_embed" not in decayed | not_decayed
    assert {"cls_token", "mask_token", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"} <= decayed
    assert {"blocks.0.norm1.weight", "norm.bias", "decoder_pred.bias", "patch_embed.proj.bias"} <= not_decayed
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | not_decayed == trainable and not decayed & not_decayed
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert opt.defaults["betas"] == (0.9, 0.95)


# ---------------------------------------------------------------------------------------------- config


def test_defaults_follow_the_data_source():
    demo = TrainConfig()  # the built-in photographs: a CPU-sized run (issue 10: one that visibly learns)
    assert (demo.img_size, demo.patch_size, demo.batch_size, demo.epochs, demo.warmup_epochs, demo.blr) == (
        64, 4, 32, 2, 1.0, 1.6e-2)
    assert (demo.model, demo.norm_pix_loss, demo.model_overrides) == ("mae_vit_demo_patch4", True, None)
    assert demo.model_config.grid_size == (16, 16) and demo.model_config.norm_pix_loss
    assert demo.model_config == MAEConfig.from_name("mae_vit_demo_patch4", norm_pix_loss=True)
    # another preset on the photographs is that preset, not silently the demo's model
    other = TrainConfig(model="mae_vit_tiny_patch16")
    assert (other.model_config.embed_dim, other.model_config.depth) == (192, 12)
    paper = TrainConfig(data="/imagenet/train", model="mae_vit_huge_patch14")  # the paper's recipe (Sec. 4)
    assert (paper.img_size, paper.patch_size, paper.epochs, paper.warmup_epochs, paper.blr, paper.repeat) == (
        224, 14, 800, 40.0, 1.5e-4, 1)
    assert (paper.weight_decay, paper.mask_ratio, paper.norm_pix_loss) == (0.05, 0.75, False)
    data_default = TrainConfig(data="/imagenet/train")  # the --data default model stays ViT-Tiny, its 16 px patches
    assert (data_default.model, data_default.patch_size, data_default.norm_pix_loss) == (
        "mae_vit_tiny_patch16", 16, False)
    # a demo run saved by an older version (ViT-Tiny, 8 px patches, pixel targets) rebuilds to that run, not this demo
    old = TrainConfig.from_dict({**demo.to_dict(), "model": "mae_vit_tiny_patch16", "patch_size": 8,
                                 "norm_pix_loss": False})
    assert (old.model_config.embed_dim, old.model_config.patch_size, old.norm_pix_loss) == (192, (8, 8), False)
    # concrete values are stored, so a saved config rebuilds to itself
    assert TrainConfig.from_dict(paper.to_dict()) == paper
    assert TrainConfig(data="d", epochs=3, warmup_epochs=1).epochs == 3


def test_a_shorter_run_keeps_the_recipes_warmup_fraction():
    """--epochs 3 with --data runs (the paper's 40 of 800 warm-up epochs would not fit): 5% of it warms up."""
    assert TrainConfig(data="d", epochs=3).warmup_epochs == pytest.approx(3 * 40 / 800)
    assert TrainConfig(data="d", epochs=1600).warmup_epochs == 40.0  # longer runs keep the recipe's 40
    assert TrainConfig(epochs=1).warmup_epochs == 0.5  # the demo: 1 of its 2 epochs
    assert TrainConfig(data="d", epochs=3, warmup_epochs=2).warmup_epochs == 2  # given: kept


def test_paths_in_the_recipe_are_absolute_so_resume_works_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = TrainConfig(data="photos")
    assert relative.data == str(tmp_path.resolve() / "photos")
    assert TrainConfig(data=str(tmp_path / "photos")) == relative  # the same folder by another path: one recipe
    monkeypatch.chdir("/")
    assert TrainConfig.from_dict(relative.to_dict()).data == relative.data
    shards = TrainConfig(data=f"{tmp_path}/a-{{0..1}}.tar::https://host/b.tar")
    assert shards.data == f"{tmp_path.resolve()}/a-{{0..1}}.tar::https://host/b.tar"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model="mae_vit_gigantic"), "valid presets: .*mae_vit_base_patch16"),
        (dict(img_size=60, patch_size=8), "img_size 60 is not divisible by patch_size 8"),
        (dict(batch_size=0), "batch_size must be a positive int, got 0"),
        (dict(precision="fp8"), "precision must be one of"),
        (dict(device="tpu"), "device must be"),
        (dict(model_overrides={"depth": 0}), "depth must be a positive int"),
        (dict(model_overrides={"img_size": 32}), "own settings"),
        (dict(warmup_epochs=9, epochs=2), "warmup_epochs"),
        (dict(lr=float("inf")), "lr must be a finite number"),
        (dict(min_lr=float("nan")), "min_lr must be a finite number"),
        (dict(weight_decay=float("nan")), "weight_decay must be a finite number"),
        (dict(warmup_epochs=float("nan")), "warmup_epochs must be a finite number"),
        (dict(blr=-1.0), r"blr must be in \[0.0, inf\]"),
        (dict(mask_ratio=float("nan")), "mask_ratio must be a finite number"),
        (dict(norm_pix_loss="false"), "norm_pix_loss must be True or False"),
        (dict(overwrite=1), "overwrite must be True or False"),
        (dict(num_workers=-1), "num_workers must be an int >= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = tiny_model()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "epoch": 3, "global_step": 7, "rng": capture_rng_state(),
             "run_config": TrainConfig().to_dict()}
    path = write_train_checkpoint(tmp_path / "checkpoints" / "last", model, state)
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == "mae-pytorch" and config["embed_dim"] == 64
    # the contract: plain torch.load(weights_only=True) reads the training state
    raw = torch.load(path / STATE_FILE, weights_only=True)
    assert raw["epoch"] == 3 and raw["global_step"] == 7
    ckpt = read_train_checkpoint(tmp_path)  # a run folder resolves to checkpoints/last
    assert ckpt.path == path
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model_state[k], v), k
    restored = tiny_model()
    restored.load_state_dict(ckpt.model_state)
    opt2 = build_optimizer(restored, lr=1e-3, weight_decay=0.05)
    opt2.load_state_dict(ckpt.train_state["optimizer"])


def test_rng_state_round_trip(tmp_path):
    import random

    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002 (the global generator is under test)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_save_recovers_from_a_crash_between_renames(tmp_path):
    model = tiny_model()
    last = write_train_checkpoint(tmp_path / "last", model, {"epoch": 1})
    # the state a crash between the two renames leaves: the previous checkpoint moved aside, no "last"
    last.rename(tmp_path / ".last.old")
    assert read_train_checkpoint(tmp_path / "last").train_state["epoch"] == 1
    assert (tmp_path / "last" / MODEL_FILE).is_file() and not (tmp_path / ".last.old").exists()


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_train_checkpoint(tmp_path / "missing")
    (tmp_path / "notckpt").mkdir()
    with pytest.raises(ValueError, match="is not a checkpoint"):
        read_train_checkpoint(tmp_path / "notckpt")
    path = write_train_checkpoint(tmp_path / "ck", tiny_model(), {"epoch": 1})
    (path / MODEL_FILE).write_bytes(b"\x00" * 100)  # damaged weights
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        read_train_checkpoint(path)


def test_cli_flags_come_from_the_fields():
    """Each field has its help in its metadata; argparse types follow the hints, so '--lr inf' reaches validation."""
    import dataclasses

    from mae.train.cli import build_parser

    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"] and f.metadata["help"] in actions[f.name].help, f.name
    assert actions["img_size"].type is int and actions["lr"].type is float and actions["data"].type is str
    assert actions["precision"].choices == ("auto", "fp32", "bf16", "fp16")
    assert "64 on the built-in photographs, 224 with --data" in actions["img_size"].help
    args = vars(parser.parse_args(["--lr", "inf", "--no-figures"]))
    assert args == {"lr": float("inf"), "figures": False}
    with pytest.raises(ValueError, match="lr must be a finite number"):
        TrainConfig(**args)
