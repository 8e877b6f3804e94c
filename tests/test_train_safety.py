"""The run folder never loses or mixes work: what --overwrite may delete, locks, older resumes, non-finite weights,
write errors, wrong checkpoints, and what the CLI advises after a stop. Tiny runs (2 optimizer steps per epoch)."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from test_train_run import tiny_args, tiny_config, write_images

import mae.train.engine as engine
from mae import create_model
from mae.io.atomic import TEMP_SUFFIX
from mae.runtime.run_folder import RunLock
from mae.train import NonFiniteLossError, pretrain, read_train_checkpoint, write_train_checkpoint
from mae.train.cli import main
from mae.train.report import read_metrics


@pytest.fixture
def data(tmp_path):
    return write_images(tmp_path / "data", 8)


def epoch_of(checkpoint) -> int:
    return torch.load(checkpoint / "train_state.pt", weights_only=True)["epoch"]


def test_overwrite_deletes_only_a_run_of_ours(tmp_path, data, capsys):
    assert main(tiny_args(tmp_path, data)) == 0
    run = tmp_path / "runs" / "t"
    assert json.loads((run / "train_config.json").read_text())["format"] == "mae-pretrain-run"
    (run / "notes.txt").write_text("precious")
    assert main(tiny_args(tmp_path, data, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "not only a run of mae-pretrain" in err and "notes.txt" in err
    assert (run / "notes.txt").read_text() == "precious" and (run / "checkpoints" / "last").is_dir()
    # a folder that only looks like a run (no marker written by the trainer) is not deleted either
    other = tmp_path / "runs" / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("{}\n")
    assert main(tiny_args(tmp_path, data, "--name", "other", "--overwrite")) == 2
    assert (other / "metrics.jsonl").exists()
    (run / "notes.txt").unlink()
    assert main(tiny_args(tmp_path, data, "--overwrite")) == 0  # a run of ours alone: replaced


def test_two_runs_cannot_share_a_folder(tmp_path, data, capsys):
    with RunLock(tmp_path / "runs" / "t", "mae-pretrain"):  # another process running under the same name
        assert main(tiny_args(tmp_path, data)) == 2
    assert "another mae-pretrain process is running" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "t" / "checkpoints").exists()
    assert main(tiny_args(tmp_path, data)) == 0  # the lock is gone with its holder


def test_resuming_an_older_kept_checkpoint_needs_a_flag(tmp_path, data, capsys):
    assert main(tiny_args(tmp_path, data, "--epochs", "3", "--keep-every", "1", "--stop-after-epoch", "2")) == 0
    ckpts = tmp_path / "runs" / "t" / "checkpoints"
    before = (ckpts / "last" / "model.safetensors").read_bytes()
    assert main(["--resume", str(ckpts / "epoch_0001")]) == 2
    err = capsys.readouterr().err
    assert "older than" in err and "--discard-newer" in err
    assert (ckpts / "last" / "model.safetensors").read_bytes() == before and epoch_of(ckpts / "last") == 2
    assert main(["--resume", str(ckpts / "epoch_0001"), "--discard-newer", "--stop-after-epoch", "2"]) == 0
    assert epoch_of(ckpts / "last") == 2


def test_interrupted_keep_and_temporaries_are_repaired_on_resume(tmp_path, data):
    assert main(tiny_args(tmp_path, data, "--epochs", "3", "--keep-every", "1", "--stop-after-epoch", "1")) == 0
    ckpts = tmp_path / "runs" / "t" / "checkpoints"
    # A kill after "last" was written but before its kept copy existed, with a half-made copy left behind.
    (ckpts / "epoch_0001").rename(ckpts / f".epoch_0001.0123456789ab{TEMP_SUFFIX}")
    assert main(["--resume", str(tmp_path / "runs" / "t"), "--stop-after-epoch", "2"]) == 0
    assert epoch_of(ckpts / "epoch_0001") == 1 and epoch_of(ckpts / "epoch_0002") == 2
    assert not list(ckpts.glob(f"*{TEMP_SUFFIX}"))


def test_a_kept_copy_moved_aside_by_a_kill_is_put_back(tmp_path, data):
    assert main(tiny_args(tmp_path, data, "--epochs", "3", "--keep-every", "1", "--stop-after-epoch", "2")) == 0
    ckpts = tmp_path / "runs" / "t" / "checkpoints"
    (ckpts / "epoch_0001").rename(ckpts / ".epoch_0001.old")  # killed between the two renames of a swap
    assert main(["--resume", str(tmp_path / "runs" / "t")]) == 0
    assert epoch_of(ckpts / "epoch_0001") == 1 and not (ckpts / ".epoch_0001.old").exists()


def test_non_finite_weights_are_never_saved(tmp_path, data, monkeypatch):
    real = engine.build_optimizer

    def poisoned(model, **kwargs):
        opt = real(model, **kwargs)
        step, calls = opt.step, []

        def step_then_poison(*a, **k):
            out = step(*a, **k)
            calls.append(1)
            if len(calls) == 2:  # the last step of epoch 1: the loss was finite, the weights are not
                with torch.no_grad():
                    model.decoder_pred.bias.fill_(float("nan"))
            return out

        opt.step = step_then_poison
        return opt

    monkeypatch.setattr(engine, "build_optimizer", poisoned)
    with pytest.raises(NonFiniteLossError, match="weights became non-finite during epoch 1"):
        pretrain(tiny_config(tmp_path, data, nan_patience=0))  # no recovery: stop
    assert not (tmp_path / "runs" / "t" / "checkpoints" / "last").exists()
    # With recovery (the default) the run goes back to its start instead, and what it saves is finite.
    result = pretrain(tiny_config(tmp_path, data, name="recovered"))
    rollbacks = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["kind"] == "rollback"]
    assert len(rollbacks) == 1 and "weights became non-finite during epoch 1" in rollbacks[0]["reason"]
    assert rollbacks[0]["to_epoch"] == 0
    ckpt = read_train_checkpoint(result.run_dir)
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())


def test_a_full_disk_gives_one_line(tmp_path, data, monkeypatch, capsys):
    def full(directory, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(engine, "write_train_checkpoint", full)
    assert main(tiny_args(tmp_path, data)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert "nothing to resume" in err and "--resume" not in err


def test_interrupt_in_epoch_one_does_not_advise_resume(tmp_path, data, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.Trainer, "train_epoch", interrupted)
    assert main(tiny_args(tmp_path, data)) == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--resume" not in err


def test_resume_with_another_models_weights_is_refused_clearly(tmp_path, data, capsys):
    assert main(tiny_args(tmp_path, data, "--epochs", "2", "--stop-after-epoch", "1")) == 0
    last = tmp_path / "runs" / "t" / "checkpoints" / "last"
    state = torch.load(last / "train_state.pt", weights_only=True)
    write_train_checkpoint(last, create_model("mae_vit_test"), state)  # another model's weights, same state
    assert main(["--resume", str(last)]) == 2
    assert "does not hold the weights of the model its run config describes" in capsys.readouterr().err


def test_resume_from_a_state_without_run_config(tmp_path, capsys):
    path = write_train_checkpoint(tmp_path / "ck", create_model("mae_vit_test"), {"epoch": 1})
    assert read_train_checkpoint(path).train_state == {"epoch": 1}
    assert main(["--resume", str(path)]) == 2
    assert "lacks ['run_config'" in capsys.readouterr().err


def test_an_absurd_img_size_is_refused_before_anything_is_allocated(tmp_path, capsys):
    """--img-size 1000000 used to reach torch's allocator (3 TB for the figure views) and end in a traceback."""
    from mae.train.cli import main

    args = tiny_args(tmp_path, None)
    args[args.index("--img-size") + 1] = "1000000"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--img-size 1000000" in err and "GiB" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing written
