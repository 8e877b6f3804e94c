"""Long runs: non-finite steps are skipped, a divergence rolls back (and resumes exactly), too many stop cleanly;
online evaluation (kNN top-1, masked-patch PSNR, a figure per evaluation, checkpoints/best). Tiny models, seconds each.

NaN is injected by a hook in the test (``mae.functional.per_patch_mse``, which the model's training path calls once
per micro-batch), counting calls so that the same calls turn NaN in every run compared.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_install import _without
from test_train_run import REPO, _free_port, tiny_args, tiny_config, weights, write_images
from torch import nn

import mae.functional
from mae import MaskedAutoEncoder
from mae.eval.data import digits_split
from mae.eval.features import POOLS
from mae.runtime.distributed import DistInfo
from mae.runtime.loop import Diverged, NonFiniteLossError, Recovery, Schedule, Trainer
from mae.train import TrainConfig, pretrain
from mae.train.cli import main
from mae.train.config import EVAL_POOLS
from mae.train.data import build_data, build_loader
from mae.train.online import OnlineEval, stratified_subset
from mae.train.report import read_metrics
from mae.train.run import check_run_dir, read_train_checkpoint


def nan_on_calls(monkeypatch, bad) -> dict:
    """Make the training loss NaN on the micro-batches whose call number (from 1) is in ``bad`` (a set or a
    predicate). Returns the call counter, shared by every run started while the patch holds."""
    real, calls = mae.functional.per_patch_mse, {"n": 0}
    is_bad = bad if callable(bad) else bad.__contains__

    def mse(pred, target, norm_pix_loss=False):
        calls["n"] += 1
        value = real(pred, target, norm_pix_loss)
        return value * float("nan") if is_bad(calls["n"]) else value

    monkeypatch.setattr(mae.functional, "per_patch_mse", mse)
    return calls


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == kind]


# ---------------------------------------------------------------------------------------------- the loop


def _trainer(recovery: Recovery | None) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = Schedule.plan(batches_per_epoch=4, accum_iter=1, batch_size=2, world_size=1, epochs=1,
                             warmup_epochs=0.0, blr=0.0, lr=0.1, min_lr=0.0)
    return Trainer(model, optimizer, schedule, DistInfo(0, 0, 1, torch.device("cpu")), recovery=recovery)


def _batches(n: int) -> list[tuple[torch.Tensor]]:
    return [(torch.randn(2, 4, generator=torch.Generator().manual_seed(i)),) for i in range(n)]


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_step_is_skipped_and_changes_nothing(where):
    """Step 2 of 3 is NaN (its loss, or only its gradient): it is skipped, logged, and nothing of it is applied: the
    weights and optimizer state after the epoch are those of training on steps 1 and 3 alone."""
    batches = _batches(3)

    def loss_of(model, batch):
        out = model(batch[0])  # (2, 1)
        if batch[0] is batches[1][0]:
            if where == "loss":
                out = out * float("nan")
            else:  # a finite loss whose gradient is NaN
                out.register_hook(lambda grad: grad * float("nan"))
        return out.pow(2).mean()

    trainer, skips = _trainer(Recovery(patience=2)), []
    trainer.train_epoch(batches, loss_of, num_batches=3, epoch=0, epochs=1, on_skip=skips.append)
    assert [s["step"] for s in skips] == [2] and skips[0]["non_finite"] == where
    assert trainer.step == 3 and trainer.skipped_in_a_row == 0
    reference = _trainer(Recovery(patience=2))
    reference.train_epoch(batches[:1], loss_of, num_batches=1, epoch=0, epochs=1)
    reference.step += 1  # the skipped step still moves the schedule on: the same lr at the same steps
    reference.train_epoch(batches[2:], loss_of, num_batches=1, epoch=0, epochs=1)
    for a, b in zip(trainer.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert trainer.optimizer.state_dict()["state"][0]["step"] == 2  # two updates applied, not three


def test_patience_raises_diverged_and_roll_back_restores_the_good_state():
    trainer = _trainer(Recovery(patience=2, max_rollbacks=1, lr_factor=0.5))
    trainer.remember_good_state()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_epoch(_batches(2), lambda m, b: m(b[0]).pow(2).mean(), num_batches=2, epoch=0, epochs=1)
    with pytest.raises(Diverged, match="2 non-finite steps in a row"):
        trainer.train_epoch(_batches(2), lambda m, b: m(b[0]).sum() * float("nan"), num_batches=2, epoch=1,
                            epochs=2)
    assert trainer.roll_back("diverged") == 0
    assert trainer.rollbacks == 1 and trainer.lr_factor == 0.5 and trainer.step == 0
    for a, b in zip(trainer.model.parameters(), before, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert trainer.optimizer.state_dict()["state"] == {}  # the optimizer as it was: no moment, no step
    with pytest.raises(NonFiniteLossError, match=r"diverged; stopping after 1 rollback\(s\) \(--max-rollbacks\)"):
        trainer.roll_back("diverged")


def test_a_rollback_gives_another_data_order_and_none_keeps_todays(tmp_path):
    data = write_images(tmp_path / "data", 8)
    dataset = build_data(tiny_config(tmp_path, data)).dataset
    loader = build_loader(dataset, batch_size=4, num_workers=0, rank=0, world_size=1, seed=0, pin_memory=False)

    def epoch(rollbacks: int) -> list[torch.Tensor]:
        loader.set_epoch(1, rollbacks)
        return [b[1] for b in loader]  # the masking noise identifies each sample

    first, again, replayed = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, replayed, strict=True))
    loader.set_epoch(1)
    assert all(torch.equal(a, b[1]) for a, b in zip(first, loader, strict=True))


# ---------------------------------------------------------------------------------------------- whole runs


def test_nan_at_a_chosen_step_recovers_and_finishes_with_finite_weights(tmp_path, monkeypatch):
    """NaN on both steps of epoch 2 (patience 2): two skips, one rollback to the end of epoch 1, epoch 2 replayed
    at half the lr on another data order, and the run finishes, everything logged."""
    data = write_images(tmp_path / "data", 8)
    nan_on_calls(monkeypatch, {3, 4})
    result = pretrain(tiny_config(tmp_path, data, epochs=3, nan_patience=2))  # 2 steps per epoch
    run = result.run_dir
    assert result.epochs_done == 3 and result.global_step == 6
    assert all(torch.isfinite(v).all() for v in weights(run).values())
    assert [(r["step"], r["non_finite"]) for r in records(run, "skip")] == [(3, "loss"), (4, "loss")]
    (rollback,) = records(run, "rollback")
    assert rollback["to_step"] == 2 and rollback["to_epoch"] == 1 and rollback["lr_factor"] == 0.5
    steps = {r["step"]: r for r in records(run, "step")}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    schedule = Schedule.plan(batches_per_epoch=2, accum_iter=1, batch_size=4, world_size=1, epochs=3,
                             warmup_epochs=0.5, blr=1e-2, lr=None, min_lr=0.0)
    assert steps[2]["lr"] == pytest.approx(schedule.lr_at(1))
    assert steps[3]["lr"] == pytest.approx(0.5 * schedule.lr_at(2))  # replayed, at half the lr
    summary = json.loads((run / "summary.json").read_text())
    recovery = summary["recovery"]
    assert recovery["rollbacks"] == 1 and recovery["skipped_steps"] == [3, 4] and recovery["lr_factor"] == 0.5
    assert recovery["rollback_events"] == [{k: rollback[k] for k in ("step", "to_step", "to_epoch", "reason")}]
    assert read_train_checkpoint(run).train_state["recovery"] == {"rollbacks": 1, "skipped_in_a_row": 0}


def test_nan_at_every_step_stops_after_max_rollbacks_keeping_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                      capsys):
    data = write_images(tmp_path / "data", 8)
    nan_on_calls(monkeypatch, lambda n: n > 2)  # epoch 1 is good, then never again
    args = tiny_args(tmp_path, data, "--epochs", "3", "--nan-patience", "2", "--max-rollbacks", "2")
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mae-pretrain: stopped: 2 non-finite steps in a row"), err
    assert "stopping after 2 rollback(s) (--max-rollbacks)" in err[0] and "checkpoints/last" in err[0]
    run = tmp_path / "runs" / "t"
    assert len(records(run, "rollback")) == 2 and len(records(run, "skip")) == 6  # 3 attempts x patience 2
    ckpt = read_train_checkpoint(run)
    assert ckpt.train_state["epoch"] == 1 and ckpt.train_state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())


@pytest.mark.parametrize("stop_after", [1, 2], ids=["stopped-before-the-rollback", "stopped-after-it"])
def test_resume_across_a_rollback_is_bit_exact(tmp_path, monkeypatch, stop_after):
    """The same NaN calls in both: one run straight through, one stopped after epoch ``stop_after`` and resumed.
    The rollback count (the lr factor, the data order) travels in the checkpoint, so the weights are identical."""
    data = write_images(tmp_path / "data", 8)
    bad = {3, 4}
    nan_on_calls(monkeypatch, bad)
    straight = pretrain(tiny_config(tmp_path, data, epochs=3, nan_patience=2, name="straight"))
    nan_on_calls(monkeypatch, bad)  # a fresh count, shared by both halves of the interrupted run
    cfg = tiny_config(tmp_path, data, epochs=3, nan_patience=2, name="resumed")
    pretrain(cfg.replace(stop_after_epoch=stop_after))
    resumed = pretrain(cfg, resume=tmp_path / "runs" / "resumed")
    assert len(records(resumed.run_dir, "rollback")) == 1
    a, b = weights(straight.run_dir), weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_patience_zero_stops_at_the_first_non_finite_step(tmp_path, monkeypatch):
    data = write_images(tmp_path / "data", 8)
    nan_on_calls(monkeypatch, {4})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at optimizer step 4 \(epoch 2, batch 2"):
        pretrain(tiny_config(tmp_path, data, epochs=3, nan_patience=0))
    assert not records(tmp_path / "runs" / "t", "skip")


# ---------------------------------------------------------------------------------------------- online evaluation


def test_eval_every_writes_knn_accuracy_and_psnr_per_epoch_and_keeps_the_best(tmp_path):
    """The default data (held-out photographs for the reconstructions, the digits for kNN), evaluated before training
    (epoch 0, the baseline) and after each epoch; training is unchanged by it (the same weights as without)."""
    cfg = tiny_config(tmp_path, None, repeat=1, epochs=2, name="online", eval_every=1, keep_best=True,
                      eval_images=100)
    result = pretrain(cfg)
    run = result.run_dir
    evals = records(run, "eval")
    assert [r["epoch"] for r in evals] == [0, 1, 2]
    # epoch 0 scores the starting weights: the model the seed builds, evaluated on its own
    torch.manual_seed(cfg.seed)
    start = OnlineEval(cfg, None, tmp_path / "start")(MaskedAutoEncoder.from_config(cfg.model_config), 0, "fp32")
    assert start["knn_top1"] == evals[0]["knn_top1"] and start["recon_mse"] == evals[0]["recon_mse"]
    assert not evals[0]["improved"] and evals[0]["step"] == 0  # a baseline, never the best to keep
    for r in evals:
        assert 0.0 <= r["knn_top1"] <= 100.0 and r["knn_top1"] > 10.0  # 10 classes: above chance
        assert r["knn_images"] == [100, 100] and r["knn_pool"] == "mean"
        assert math.isfinite(r["recon_psnr"]) and r["recon_psnr"] > 0 and 0 < r["recon_mse"] < 1
        assert (run / r["figure"]).is_file() and r["figure"] == f"online/recon_epoch_{r['epoch']:04d}.png"
    best = max(evals[1:], key=lambda r: r["knn_top1"])
    best_state = read_train_checkpoint(run / "checkpoints" / "best").train_state
    assert best_state["epoch"] == best["epoch"] and best_state["online"]["knn_top1"] == best["knn_top1"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["online"]["best_knn_top1"] == best["knn_top1"] and summary["online"]["last"]["epoch"] == 2
    assert summary["online"]["start"]["knn_top1"] == evals[0]["knn_top1"]
    plain = pretrain(cfg.replace(name="plain", eval_every=0, keep_best=False))
    for k, v in weights(plain.run_dir).items():
        assert torch.equal(v, weights(run)[k]), k
    # a resumed run does not score its start again: epoch 0 was the first attempt's
    pretrain(cfg.replace(epochs=3), resume=run)
    assert [r["epoch"] for r in records(run, "eval")] == [0, 1, 2, 3]
    # best/ and online/ are the run's own: --overwrite may delete them, but not a stranger's file among them
    check_run_dir(run, resuming=False, overwrite=True)
    (run / "online" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="online/notes.txt"):
        check_run_dir(run, resuming=False, overwrite=True)


def test_eval_data_folder_of_your_own_is_evaluated_from_the_start(tmp_path):
    """--eval-data FOLDER (train/ and val/ class folders): the labels are read from the folder, every image counted,
    and the kNN is scored at epoch 0 and after each epoch (it crashed on the folder's dataset before)."""
    data = write_images(tmp_path / "data", 8)
    labelled = tmp_path / "labelled"
    for split, n in (("train", 6), ("val", 4)):
        for c, seed in (("dark", 1), ("light", 2)):
            write_images(labelled / split / c, n, seed=seed + (split == "val") * 10)
    result = pretrain(tiny_config(tmp_path, data, repeat=1, epochs=1, name="own", eval_every=1,
                                  eval_data=str(labelled)))
    evals = records(result.run_dir, "eval")
    assert [r["epoch"] for r in evals] == [0, 1]
    assert all(r["knn_images"] == [12, 8] and 0.0 <= r["knn_top1"] <= 100.0 for r in evals)


def test_the_online_knn_images_are_a_fixed_stratified_subset(tmp_path):
    """Each class in proportion (within one image), the same indices every time, all of a split when it is small."""
    labels = torch.as_tensor(digits_split("train")[1])  # (1438,)
    subset = stratified_subset(labels, 256)
    assert len(subset) == 256 and torch.equal(subset, subset.unique())  # sorted, no repeats
    share = 256 * torch.bincount(labels) / len(labels)
    assert (torch.bincount(labels[subset]) - share).abs().max() <= 1.0
    assert torch.equal(subset, stratified_subset(labels, 256))
    assert set(subset.tolist()) < set(stratified_subset(labels, 300).tolist())  # a larger N only adds images
    assert torch.equal(stratified_subset(labels, 5000), torch.arange(len(labels)))
    # the evaluation holds its subset from the start: the same images at every evaluation, and after a resume
    first, again = (OnlineEval(tiny_config(tmp_path, None, eval_every=1, eval_images=50), None, tmp_path)
                    for _ in range(2))
    assert len(first.train) == len(first.val) == 50
    assert first.train.indices == again.train.indices and first.val.indices == again.val.indices


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--eval-images", "0", "eval_images must be a positive int, got 0"),
    ("--eval-images", "-5", "eval_images must be a positive int, got -5"),
    ("--eval-pool", "max", "argument --eval-pool: invalid choice: 'max' (choose from 'mean', 'cls')"),
])
def test_bad_online_eval_settings_are_refused_in_one_line(tmp_path, capsys, flag, value, message):
    capsys.readouterr()
    try:
        code = main(tiny_args(tmp_path, None, "--eval-every", "1", flag, value))
    except SystemExit as stop:  # argparse refuses a choice it does not offer by exiting
        code = stop.code
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"mae-pretrain: error: {message}"
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match=r"eval_pool must be one of \('mean', 'cls'\), got 'max'"):
        TrainConfig(eval_pool="max")
    assert sorted(EVAL_POOLS) == sorted(POOLS)  # the online choices are the feature extractor's


def test_keep_best_without_eval_every_is_refused():
    with pytest.raises(ValueError, match="keep_best needs online evaluation.*--eval-every"):
        TrainConfig(keep_best=True)
    with pytest.raises(ValueError, match="rollback_lr_factor must be in"):
        TrainConfig(rollback_lr_factor=0.0)


def test_eval_every_without_the_eval_extra_refuses_up_front_in_one_line(tmp_path):
    out = _without(tmp_path, ("sklearn",), sys.executable, "-m", "mae.train",
                   *tiny_args(tmp_path, None, "--eval-every", "1"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == ("mae-pretrain: error: --eval-every needs the eval extra (scikit-learn could not be "
                                  "imported): pip install 'mae-pytorch[eval]'")
    assert not (tmp_path / "runs").exists()
    assert REPO.is_dir()


_DDP_SCRIPT = """
import json, os, sys
import torch
import mae.functional
from mae.train import TrainConfig, pretrain

rank, real, calls = int(os.environ["RANK"]), mae.functional.per_patch_mse, {"n": 0}

def mse(pred, target, norm_pix_loss=False):
    calls["n"] += 1
    value = real(pred, target, norm_pix_loss)
    return value * float("nan") if rank == 1 and calls["n"] == 3 else value  # rank 1 alone, step 3

mae.functional.per_patch_mse = mse
result = pretrain(TrainConfig.from_dict(json.loads(sys.argv[1])))
torch.save(result.model.state_dict(), os.path.join(sys.argv[2], f"rank{rank}.pt"))
"""


@pytest.mark.slow
def test_every_process_skips_the_step_only_one_of_them_saw_diverge(tmp_path):
    """torchrun, 2 CPU processes: only rank 1's loss is NaN, yet both skip step 3 and keep the same weights."""
    data = write_images(tmp_path / "data", 8)
    cfg = tiny_config(tmp_path, data, batch_size=2, epochs=2, device="cpu")  # 2 steps per epoch
    script = tmp_path / "ddp_nan.py"
    script.write_text(_DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), json.dumps(cfg.to_dict()), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    assert [r["step"] for r in records(run, "skip")] == [3]  # logged by rank 0, whose own loss was finite
    assert [r["step"] for r in records(run, "step")] == [1, 2, 4]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("args, says", [
    (["--eval-every", "1", "--eval-data", "nope"], "--eval-data"),  # not --data: the flag the user typed
    (["--init", "nope.pth"], "--init"),
])
def test_a_missing_path_is_named_by_its_own_flag(tmp_path, capsys, args, says):
    assert main([*args[:-1], str(tmp_path / args[-1]), "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {says}" in err and "does not exist" in err, err
    assert not (tmp_path / "runs").exists()


def test_path_settings_are_absolute_and_empty_ones_refused(tmp_path, monkeypatch):
    """--eval-data is saved in the run's recipe like --data and --init: relative, it would name another folder when
    the run is resumed from elsewhere. An empty --init read the working directory as a checkpoint."""
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data="photos", init="runs/a", eval_data="labelled")
    assert (cfg.data, cfg.init, cfg.eval_data) == tuple(str(tmp_path.resolve() / p) for p in ("photos", "runs/a",
                                                                                              "labelled"))
    for name, says in (("data", "a folder path, shards or None"), ("init", "a checkpoint path or None"),
                       ("eval_data", "a labelled folder path or None")):
        for bad in ("", "  ", 3):
            with pytest.raises(ValueError, match=f"{name} must be {says}.*got {bad!r}"):
                TrainConfig(**{name: bad})


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"patience": 0}, "patience must be a positive int, got 0"),
    ({"max_rollbacks": -1}, "max_rollbacks must be an int >= 0, got -1"),
    ({"lr_factor": 0.0}, r"lr_factor must be in \(0, 1\], got 0.0"),
    ({"lr_factor": 1.5}, r"lr_factor must be in \(0, 1\], got 1.5"),
])
def test_a_recovery_policy_out_of_range_is_refused_naming_the_field(kwargs, says):
    """Recovery is public (mae.runtime.loop): built in Python, it is checked there too, not only by the CLI."""
    with pytest.raises(ValueError, match=says):
        Recovery(**kwargs)


def test_a_subset_of_no_images_is_refused():
    labels = torch.arange(10) % 2
    for n in (0, -3):
        with pytest.raises(ValueError, match=f"n must be a positive int, got {n}"):
            stratified_subset(labels, n)
