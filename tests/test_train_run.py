"""End-to-end tests of pretraining runs: outputs, exact resume, accumulation, divergence, crash safety, CLI errors,
and DDP (2 CPU processes with gloo) against one process. Tiny models, a few steps each."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mae.functional
import mae.train.report
from mae import MAEConfig, MaskedAutoEncoder
from mae.config import IMAGENET_MEAN, IMAGENET_STD
from mae.train import NonFiniteLossError, TrainConfig, pretrain
from mae.train.cli import main
from mae.train.data import build_data, normalize_on_device
from mae.train.data.augment import MaskingSpec
from mae.train.engine import build_optimizer
from mae.train.report import heldout_batch, heldout_scores, read_metrics
from mae.train.run import check_run_dir, read_train_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"embed_dim": 64, "depth": 2, "num_heads": 4, "decoder_embed_dim": 32, "decoder_depth": 1,
              "decoder_num_heads": 4}


def write_images(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        # smooth-ish images (a gradient plus noise) so the loss has something to learn
        base = np.linspace(0, 255, 48)[None, :, None] * rng.random(3)[None, None, :]
        img = np.clip(base + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return folder


def tiny_config(tmp_path: Path, data: Path | None, **kw) -> TrainConfig:
    base = dict(img_size=32, patch_size=8, model_overrides=dict(TINY_MODEL), data=str(data) if data else None,
                batch_size=4, num_workers=0, epochs=2, warmup_epochs=0.5, blr=1e-2, progress=False, keep_every=0,
                figures=False, output_dir=str(tmp_path / "runs"), name="t", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def tiny_args(tmp_path: Path, data: Path | None, *extra: str) -> list[str]:
    args = ["--img-size", "32", "--patch-size", "8", "--batch-size", "4", "--num-workers", "0", "--no-progress",
            "--no-figures",
            "--epochs", "1", "--keep-every", "0", "--warmup-epochs", "0", "--output-dir", str(tmp_path / "runs"),
            "--name", "t"]
    for k, v in TINY_MODEL.items():
        args += ["--model-override", f"{k}={v}"]
    if data is not None:
        args += ["--data", str(data)]
    return args + list(extra)


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / which / "model.safetensors")

# ---------------------------------------------------------------------------------------------- a whole run


def test_default_data_run_writes_everything(tmp_path, capsys):
    """The built-in photographs, through the CLI: config, metrics, checkpoints (last + kept), both figures."""
    args = tiny_args(tmp_path, None, "--repeat", "1", "--epochs", "2", "--keep-every", "2", "--blr", "1e-2",
                     "--figures")
    assert main(args) == 0
    run = tmp_path / "runs" / "t"
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["resolved"]["effective_batch"] == 4
    assert resolved["resolved"]["lr"] == pytest.approx(1e-2 * 4 / 256)
    assert resolved["data"]["source"] == "scikit-image" and "chelsea" in resolved["data"]["held_out"]
    assert resolved["resolved"]["steps_per_epoch"] == 3  # 12 photos / batch 4
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 and r["img_per_s"] > 0 for r in records)
    for which in ("last", "epoch_0002"):
        config = json.loads((run / "checkpoints" / which / "config.json").read_text())
        config.pop("format")
        model = MaskedAutoEncoder.from_config(MAEConfig(**config))
        model.load_state_dict(weights(run, which))
    # the library's loader reads the trainer's checkpoints as they are
    loaded = mae.from_pretrained(run / "checkpoints" / "last", strict=True)
    for k, v in weights(run).items():
        assert torch.equal(loaded.state_dict()[k], v), k
    kept, last = run / "checkpoints" / "epoch_0002", run / "checkpoints" / "last"
    assert (kept / "model.safetensors").stat().st_ino == (last / "model.safetensors").stat().st_ino  # hard link
    state = torch.load(last / "train_state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["global_step"] == 6 and state["run_config"]["data"] is None
    for png in ("loss.png", "reconstructions.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "img/s" in out


def test_default_run_scores_the_held_out_batch_and_draws_it(tmp_path, monkeypatch):
    """Without --data (issue 10): summary.json with the score and the baseline, the scored batch saved as a plain
    tensor, and the reconstruction figure drawn from that batch with the same masks."""
    drawn = {}
    real_figure = mae.train.report.reconstruction_figure

    def recording_figure(model, imgs, **kw):
        drawn.update(imgs=imgs.cpu(), noise=kw["noise"].cpu())
        return real_figure(model, imgs, **kw)

    monkeypatch.setattr(mae.train.report, "reconstruction_figure", recording_figure)
    result = pretrain(tiny_config(tmp_path, None, epochs=1, repeat=1, figures=True))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert {"heldout_loss", "heldout_baseline_loss", "heldout_ratio", "norm_pix_loss", "steps", "seconds"} <= set(
        summary)
    assert summary["steps"] == result.global_step == 3 and summary["norm_pix_loss"] is True  # the demo's targets
    assert summary["heldout_ratio"] == pytest.approx(summary["heldout_loss"] / summary["heldout_baseline_loss"])
    imgs = torch.load(result.run_dir / "heldout_images.pt", weights_only=True)
    assert type(imgs) is torch.Tensor and imgs.shape == (16, 3, 32, 32) and imgs.dtype == torch.float32
    noise = heldout_batch(32, MaskingSpec(16))[1]
    scores = heldout_scores(result.model, imgs, noise)  # the saved batch IS the scored one
    assert (scores.loss, scores.baseline) == pytest.approx((summary["heldout_loss"], summary["heldout_baseline_loss"]))
    assert torch.equal(drawn["imgs"], imgs) and torch.equal(drawn["noise"], noise)
    assert (result.run_dir / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_run_dir(result.run_dir, resuming=False, overwrite=True)  # the new files are ours: --overwrite may delete


def test_data_run_summary_has_no_held_out_fields(tmp_path):
    data = write_images(tmp_path / "data", 8)
    result = pretrain(tiny_config(tmp_path, data, epochs=1))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert set(summary) == {"norm_pix_loss", "steps", "seconds", "recovery"} and summary["norm_pix_loss"] is False
    assert summary["recovery"] == {"rollbacks": 0, "lr_factor": 1.0, "skipped_steps": [], "rollback_events": []}
    assert not (result.run_dir / "heldout_images.pt").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    data = write_images(tmp_path / "data", 8)
    threads_before = torch.get_num_threads()
    result = pretrain(tiny_config(tmp_path, data, precision=precision, epochs=1, threads=threads_before + 1))
    assert math.isfinite(result.last_loss)
    resolved = json.loads((result.run_dir / "train_config.json").read_text())["resolved"]
    assert resolved["precision"] == precision
    # applied during the run, restored after it
    assert resolved["threads"] == threads_before + 1 and torch.get_num_threads() == threads_before
    scaler = torch.load(result.run_dir / "checkpoints/last/train_state.pt", weights_only=True)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # the grad scaler is used (and saved) for fp16 only


@pytest.mark.cuda
def test_cuda_run_uses_bf16_and_fused_adamw(tmp_path):
    data = write_images(tmp_path / "data", 8)
    result = pretrain(tiny_config(tmp_path, data, device="cuda", epochs=1))
    resolved = json.loads((result.run_dir / "train_config.json").read_text())["resolved"]
    assert resolved["device"].startswith("cuda")
    assert resolved["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    state = torch.load(result.run_dir / "checkpoints/last/train_state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["fused"] is True
    assert all(v.device.type == "cpu" for v in weights(result.run_dir).values())  # saved as CPU tensors


# ---------------------------------------------------------------------------------------------- resume


def test_resume_is_exact(tmp_path):
    """2 epochs straight == 1 epoch, stop, resume, 1 epoch (bit-identical on CPU), accumulation included."""
    data = write_images(tmp_path / "data", 10)
    # 10 images / batch 2 = 5 micro-batches, accum 2: groups of 2, 2 and a last partial 1 in every epoch
    common = dict(batch_size=2, accum_iter=2, epochs=2)
    straight = pretrain(tiny_config(tmp_path, data, name="straight", **common))
    first = pretrain(tiny_config(tmp_path, data, name="split", stop_after_epoch=1, **common))
    assert first.epochs_done == 1 and first.global_step == 3
    resumed = pretrain(tiny_config(tmp_path, data, name="split", **common), resume=first.run_dir)
    assert resumed.global_step == straight.global_step == 6
    a, b = weights(straight.run_dir), weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a = torch.load(straight.run_dir / "checkpoints/last/train_state.pt", weights_only=True)["optimizer"]
    opt_b = torch.load(resumed.run_dir / "checkpoints/last/train_state.pt", weights_only=True)["optimizer"]
    for sa, sb in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    steps = [r["step"] for r in read_metrics(resumed.run_dir / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_changed_recipe(tmp_path, capsys):
    data = write_images(tmp_path / "data", 8)
    assert main(tiny_args(tmp_path, data, "--epochs", "2", "--stop-after-epoch", "1")) == 0
    run = tmp_path / "runs" / "t"
    assert main(["--resume", str(run), "--batch-size", "2"]) == 2
    assert "cannot change these settings when resuming" in capsys.readouterr().err
    assert main(["--resume", str(run), "--no-progress"]) == 0  # continues with the saved recipe
    assert torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)["epoch"] == 2


# ---------------------------------------------------------------------------------------------- accumulation


def test_accumulation_steps_on_the_last_partial_group(tmp_path, monkeypatch):
    """5 micro-batches with accum 2 give 3 optimizer steps; each steps on the mean gradient of its micro-batches."""
    seen = []  # (params, grads) at every optimizer step, in param-group order
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        params = [p for g in self.param_groups for p in g["params"]]
        seen.append(([p.detach().clone() for p in params], [p.grad.detach().clone() for p in params]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    data = write_images(tmp_path / "data", 10)
    cfg = tiny_config(tmp_path, data, batch_size=2, accum_iter=2, epochs=1)
    assert pretrain(cfg).global_step == 3
    assert len(seen) == 3

    # Independent replay: the sampler's order for epoch 0, grouped [4, 4, 2] samples, each group as ONE batch.
    samples = build_data(cfg).dataset
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    model = MaskedAutoEncoder.from_config(cfg.model_config)
    params = [p for g in build_optimizer(model, lr=1.0, weight_decay=0.05).param_groups for p in g["params"]]
    for group, (weights_then, grads) in zip([order[0:4], order[4:8], order[8:10]], seen, strict=True):
        with torch.no_grad():
            for p, w in zip(params, weights_then, strict=True):
                p.copy_(w)
                p.grad = None
        imgs, noise = (torch.stack(t) for t in zip(*(samples[i] for i in group), strict=True))
        imgs = normalize_on_device(imgs, IMAGENET_MEAN, IMAGENET_STD)  # what the training step does on its device
        model(imgs, noise=noise).loss.backward()
        for p, g in zip(params, grads, strict=True):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------- divergence


def test_non_finite_loss_without_recovery_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """--nan-patience 0: today's stop at the first non-finite step (tests/test_long_runs.py covers recovery)."""
    data = write_images(tmp_path / "data", 8)
    real_mse, calls = mae.functional.per_patch_mse, {"n": 0}

    def mse_turning_nan(pred, target, norm_pix_loss=False):
        calls["n"] += 1
        value = real_mse(pred, target, norm_pix_loss)
        return value * float("nan") if calls["n"] == 4 else value  # the 2nd step of epoch 2

    # The trainer's loss goes through the model's fast path, which scores patches with functional.per_patch_mse.
    monkeypatch.setattr(mae.functional, "per_patch_mse", mse_turning_nan)
    cfg = tiny_config(tmp_path, data, epochs=3, nan_patience=0)  # 2 steps per epoch
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at optimizer step 4 \(epoch 2, batch 2"):
        pretrain(cfg)
    ckpt = read_train_checkpoint(tmp_path / "runs" / "t")
    assert ckpt.train_state["epoch"] == 1 and ckpt.train_state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())


# ---------------------------------------------------------------------------------------------- crash safety

_KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    import mae.train.run as ck
    from mae import create_model

    path, phase = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                         decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    ck.write_train_checkpoint(path, model, {"epoch": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def hang(msg):
        print(msg, flush=True)
        time.sleep(120)

    if phase == "writing":  # killed after the new weights are written, before anything is swapped
        real = ck.save_pretrained
        ck.save_pretrained = lambda *a, **k: (real(*a, **k), hang("WRITING"))
    else:  # killed between the two renames: the old checkpoint moved aside, the new one not yet in place
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(".last.old"):
                hang("SWAPPING")
        ck.os.replace = replace
    ck.write_train_checkpoint(path, model, {"epoch": 2})
""")


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["writing", "swapping"])
def test_sigkill_while_saving_keeps_the_previous_checkpoint(tmp_path, phase):
    script = tmp_path / "save_and_hang.py"
    script.write_text(_KILL_SCRIPT)
    path = tmp_path / "checkpoints" / "last"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(path), phase], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() in ("WRITING", "SWAPPING"), proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt = read_train_checkpoint(path)
    assert ckpt.train_state["epoch"] == 1
    torch.manual_seed(0)
    fresh = MaskedAutoEncoder.from_config(MAEConfig(**{k: v for k, v in ckpt.model_config.items()}))
    for k, v in fresh.state_dict().items():
        assert torch.equal(ckpt.model_state[k], v), k


# ---------------------------------------------------------------------------------------------- CLI errors


def test_cli_input_errors_write_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--data", str(tmp_path / "missing")], "does not exist"),
        (["--data", str(empty)], "holds no image file"),
        (["--model", "mae_vit_enormous"], "valid presets: mae_vit_base_patch16"),
        (["--img-size", "36"], "img_size 36 is not divisible by patch_size 8"),
        (["--resume", str(tmp_path / "nowhere")], "does not exist"),
        (["--resume", str(empty)], "is not a checkpoint"),
    ]
    for extra, message in cases:
        assert main(tiny_args(tmp_path, None, *extra)) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not runs.exists()


def test_cli_corrupt_resume_file(tmp_path, capsys):
    data = write_images(tmp_path / "data", 8)
    assert main(tiny_args(tmp_path, data)) == 0
    state = tmp_path / "runs" / "t" / "checkpoints" / "last" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # truncated
    assert main(["--resume", str(state.parent)]) == 2
    assert "corrupt or unreadable" in capsys.readouterr().err


def test_cli_refuses_an_output_folder_holding_a_run(tmp_path, capsys):
    data = write_images(tmp_path / "data", 8)
    assert main(tiny_args(tmp_path, data)) == 0
    run = tmp_path / "runs" / "t"
    before = (run / "checkpoints" / "last" / "model.safetensors").read_bytes()
    assert main(tiny_args(tmp_path, data, "--seed", "1")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "checkpoints" / "last" / "model.safetensors").read_bytes() == before  # untouched
    assert main(tiny_args(tmp_path, data, "--seed", "1", "--overwrite")) == 0
    assert (run / "checkpoints" / "last" / "model.safetensors").read_bytes() != before
    # a non-empty folder that is not a run is never deleted, even with --overwrite
    other = tmp_path / "runs" / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    assert main(tiny_args(tmp_path, data, "--name", "mine", "--overwrite")) == 2
    assert "does not hold a run" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "precious"


def test_tensorboard_is_optional_and_checked_first(tmp_path, monkeypatch, capsys):
    data = write_images(tmp_path / "data", 8)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    assert main(tiny_args(tmp_path, data, "--tensorboard")) == 2
    assert "pip install 'mae-pytorch[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_tensorboard_logs_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    data = write_images(tmp_path / "data", 8)
    assert main(tiny_args(tmp_path, data, "--tensorboard")) == 0
    assert list((tmp_path / "runs" / "t" / "tensorboard").glob("events.out.tfevents.*"))


def test_python_m_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "mae.train", "--help"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "--accum-iter" in out.stdout and "--resume" in out.stdout


# ---------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    """torchrun, 2 processes, gloo: batch 1 x accum 2 x world 2 == one process with batch 2 x accum 2."""
    data = write_images(tmp_path / "data", 8)
    single = pretrain(tiny_config(tmp_path, data, name="single", batch_size=2, accum_iter=2, epochs=2))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mae.train",
           *tiny_args(tmp_path, data, "--name", "ddp", "--batch-size", "1", "--accum-iter", "2", "--epochs", "2",
                      "--warmup-epochs", "0.5", "--blr", "1e-2", "--device", "cpu")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    resolved = json.loads((run / "train_config.json").read_text())["resolved"]
    assert resolved["world_size"] == 2 and resolved["effective_batch"] == 4
    assert resolved["lr"] == pytest.approx(1e-2 * 4 / 256)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4]  # written once (rank 0 only), 2 steps per epoch
    # The same losses at every step ...
    single_losses = [r["loss"] for r in read_metrics(single.run_dir / "metrics.jsonl") if r["kind"] == "step"]
    ddp_losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "step"]
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)
    # ... and the same weights. One exception: the key bias (middle third of each qkv bias) cannot change the
    # attention (softmax ignores a shift shared by all keys), so its gradient is pure rounding noise, which Adam
    # scales up to +-lr per step whatever the summation order; it is checked against that bound only.
    a, b = weights(single.run_dir), weights(run)
    lr = resolved["lr"]
    for k in a:
        if k.endswith("qkv.bias"):
            width = a[k].shape[0] // 3
            assert (b[k][width:2 * width] - a[k][width:2 * width]).abs().max() <= 2 * lr * len(steps)
            b[k][width:2 * width] = a[k][width:2 * width]
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
