"""Pretraining on a cluster: SLURM's variables form the group, a stop signal saves where the run is and the resume
continues bit-exactly, and a run stopped with N processes finishes its epoch with M, every sample used once.

Multi-process runs start ``python -m mae.train`` as ``srun`` would (SLURM_* variables, no torchrun), gloo on the CPU.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_train_run import REPO, tiny_args, tiny_config, weights, write_images

import mae.train.engine
from mae.runtime.distributed import (
    SLURM_PORT_BASE,
    SLURM_PORT_SPAN,
    launcher_env,
    parse_nodelist,
    resolve_device,
    slurm_port,
)
from mae.runtime.preemption import PREEMPTED_EXIT, request_requeue
from mae.train import pretrain
from mae.train.cli import main
from mae.train.data.make_shards import main as make_shards
from mae.train.report import read_metrics
from mae.train.run import newest_checkpoint, read_train_checkpoint

# ---------------------------------------------------------------------------------------------- SLURM environment


@pytest.mark.parametrize(("nodelist", "hosts"), [
    ("node01", ["node01"]),
    ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
    ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
    ("a[1-2]-ib[3-4],b7", ["a1-ib3", "a1-ib4", "a2-ib3", "a2-ib4", "b7"]),
    ("node[009-011],x-1.cluster", ["node009", "node010", "node011", "x-1.cluster"]),
])
def test_parse_nodelist(nodelist, hosts):
    assert parse_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["", "node[01-03", "node01]", "node[03-01]", "node[a-b]", "a,,b"])
def test_parse_nodelist_refuses_what_is_no_node_list(bad):
    with pytest.raises(ValueError, match="SLURM node list"):
        parse_nodelist(bad)


SLURM_ENV = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[07-10]",
             "SLURM_JOB_ID": "4242"}


def test_slurm_variables_give_rank_world_and_address():
    launch = launcher_env(SLURM_ENV)
    assert (launch.launcher, launch.rank, launch.local_rank, launch.world_size) == ("slurm", 3, 1, 8)
    assert launch.init_method == f"tcp://gpu07:{SLURM_PORT_BASE + 4242}"
    assert launcher_env({**SLURM_ENV, "MASTER_ADDR": "h", "MASTER_PORT": "1234"}).init_method == "tcp://h:1234"
    assert launcher_env({}).launcher is None
    ports = {slurm_port(str(job)) for job in range(100_000, 100_100)}
    assert len(ports) == 100 and all(SLURM_PORT_BASE <= p < SLURM_PORT_BASE + SLURM_PORT_SPAN for p in ports)


def test_torchrun_variables_win_over_slurm():
    """torchrun inside an srun step (one agent per node), elastic restarts included: its ranks are the ones."""
    env = {**SLURM_ENV, "RANK": "5", "LOCAL_RANK": "2", "WORLD_SIZE": "16", "TORCHELASTIC_RUN_ID": "x",
           "TORCHELASTIC_RESTART_COUNT": "1"}
    launch = launcher_env(env)
    assert (launch.launcher, launch.rank, launch.local_rank, launch.world_size) == ("torchrun", 5, 2, 16)
    assert launch.init_method is None  # torch's env://, from MASTER_ADDR/MASTER_PORT that torchrun sets


# ---------------------------------------------------------------------------------------------- requeue


def fake_scontrol(folder: Path, requeue_flag: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {folder}/calls\n"
                      f"[ \"$1\" = show ] && echo \"JobId=$3 JobName=x Requeue={requeue_flag} Restarts=0\"\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.parametrize("requeueable", [1, 0])
def test_requeue_only_a_requeueable_job(tmp_path, requeueable):
    bin_dir = fake_scontrol(tmp_path / "bin", requeueable)
    line = request_requeue({"SLURM_JOB_ID": "77", "PATH": str(bin_dir)})
    calls = (bin_dir / "calls").read_text().splitlines()
    if requeueable:
        assert calls == ["show job 77", "requeue 77"] and "requeued" in line
    else:
        assert calls == ["show job 77"] and "not submitted requeueable" in line


def test_requeue_without_scontrol_says_so_in_one_line(tmp_path):
    line = request_requeue({"SLURM_JOB_ID": "77", "PATH": str(tmp_path)})
    assert "scontrol is not on PATH" in line and "\n" not in line
    assert request_requeue({"PATH": str(tmp_path)}) is None  # not under SLURM: nothing to say


# ---------------------------------------------------------------------------------------------- stop and resume


def signal_at_step(monkeypatch, step: int, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to this process during optimizer step ``step`` (1-based); the run stops after the next one."""
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step_and_signal(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), sig)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_and_signal)


def test_sigterm_to_every_process_of_the_step_workers_included_still_saves(tmp_path, monkeypatch, capsys):
    """scancel, a time limit or preemption signal every process of the step: the data-loader workers too. They used
    to die of it, and the run failed with "DataLoader worker exited unexpectedly" instead of saving. The workers are
    signalled during step 1 and waited for; step 2 (the run stops after it) needs 8 micro-batches, more than the 4
    the two workers can have prefetched, so it must be served by the signalled workers."""
    data = write_images(tmp_path / "data", 64)
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step_and_signal_all(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            workers = multiprocessing.active_children()
            assert len(workers) == 2
            for worker in workers:
                os.kill(worker.pid, signal.SIGTERM)
            for worker in workers:
                worker.join(timeout=0.5)  # a worker that dies of it is gone by now
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_and_signal_all)
    args = tiny_args(tmp_path, data, "--epochs", "2", "--accum-iter", "8")
    args[args.index("--num-workers") + 1] = "2"
    assert main(args) == PREEMPTED_EXIT
    assert "stopped: SIGTERM: saved in" in capsys.readouterr().err
    assert read_train_checkpoint(tmp_path / "runs" / "t").train_state["global_step"] == 2  # after the next step


def test_a_stop_with_non_finite_weights_saves_nothing_and_does_not_claim_it_did(tmp_path, monkeypatch, capsys):
    """Weights gone non-finite (with a finite loss) when the stop signal is acted on: nothing is saved, and the run
    ends as diverged (exit 1), not as a preempted run 'saved in checkpoints/last' to requeue and continue."""
    data = write_images(tmp_path / "data", 12)
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step_then_break_the_weights(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_break_the_weights)
    assert main(tiny_args(tmp_path, data, "--epochs", "2")) == 1
    err = capsys.readouterr().err
    assert "stop signal, but the weights became non-finite during epoch 1" in err and "nothing was saved" in err
    assert "saved in" not in err
    assert not (tmp_path / "runs" / "t" / "checkpoints" / "last").exists()


def test_sigterm_mid_epoch_then_resume_is_bit_exact(tmp_path, monkeypatch):
    """2 epochs straight == SIGTERM during step 4 (epoch 2: 3 steps per epoch), stop after step 5, resume."""
    data = write_images(tmp_path / "data", 12)
    common = dict(batch_size=2, accum_iter=2, epochs=2)  # 6 micro-batches: groups of 2 -> 3 steps per epoch
    straight = pretrain(tiny_config(tmp_path, data, name="straight", **common))
    handler_before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        signal_at_step(patch, 4)
        stopped = pretrain(tiny_config(tmp_path, data, name="split", **common))
    assert stopped.stopped_by == "SIGTERM" and stopped.global_step == 5 and stopped.epochs_done == 1
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the handlers are put back
    state = read_train_checkpoint(stopped.run_dir).train_state
    assert state["epoch"] == 1 and state["global_step"] == 5 and state["position"]["samples"] == 8
    resumed = pretrain(tiny_config(tmp_path, data, name="split", **common), resume=stopped.run_dir)
    assert resumed.stopped_by is None and resumed.global_step == straight.global_step == 6
    a, b = weights(straight.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt = [torch.load(r.run_dir / "checkpoints/last/train_state.pt", weights_only=True)["optimizer"]["state"]
           for r in (straight, resumed)]
    assert all(torch.equal(x["exp_avg_sq"], y["exp_avg_sq"]) for x, y in zip(*(o.values() for o in opt), strict=True))
    runs = [read_metrics(r.run_dir / "metrics.jsonl") for r in (straight, resumed)]
    steps = [[(r["step"], r["loss"]) for r in records if r["kind"] == "step"] for records in runs]
    assert steps[0] == steps[1]  # the same loss at every step, bit for bit
    epochs = [[(r["epoch"], r["loss"]) for r in records if r["kind"] == "epoch"] for records in runs]
    assert epochs[0] == epochs[1]  # the resumed epoch's mean counts its steps before the stop
    assert [r["samples"] for r in runs[1] if r["kind"] == "stop"] == [8]


def test_a_second_signal_while_saving_changes_nothing(tmp_path, monkeypatch):
    data = write_images(tmp_path / "data", 8)
    real_write, writes = mae.train.engine.write_train_checkpoint, []

    def write_under_fire(directory, model, state):
        os.kill(os.getpid(), signal.SIGUSR1)  # another signal while the stop is being saved
        writes.append(state.get("position"))
        return real_write(directory, model, state)

    signal_at_step(monkeypatch, 1, signal.SIGUSR1)
    monkeypatch.setattr(mae.train.engine, "write_train_checkpoint", write_under_fire)
    stopped = pretrain(tiny_config(tmp_path, data, epochs=2))
    assert stopped.stopped_by == "SIGUSR1" and stopped.global_step == 2
    assert writes == [{"samples": 8, "steps": 2, "loss_sum": writes[0]["loss_sum"]}]  # saved once
    assert read_train_checkpoint(stopped.run_dir).train_state["position"]["samples"] == 8


def test_cli_exits_143_and_resume_auto_continues_or_starts_afresh(tmp_path, monkeypatch, capsys):
    data = write_images(tmp_path / "data", 8)
    args = tiny_args(tmp_path, data, "--epochs", "2", "--resume", "auto")
    with monkeypatch.context() as patch:
        signal_at_step(patch, 1)
        assert main(args) == PREEMPTED_EXIT  # nothing to resume yet: started afresh, then stopped
    assert "stopped: SIGTERM" in capsys.readouterr().err
    assert main(args) == 0  # the same command continues from the stop
    state = read_train_checkpoint(tmp_path / "runs" / "t").train_state
    assert state["epoch"] == 2 and state["global_step"] == 4 and "position" not in state
    steps = [r["step"] for r in read_metrics(tmp_path / "runs" / "t" / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4]


def test_resume_auto_continues_last_not_a_branch_left_behind_and_never_replaces_unreadable_checkpoints(
        tmp_path, capsys):
    """After going back to epoch 1 (--discard-newer), the kept epoch_0002 of the abandoned branch got further than
    last: --resume auto must still continue last. A damaged last falls back to the newest readable kept copy; when no
    checkpoint reads, the run is refused, not started afresh over them."""
    data = write_images(tmp_path / "data", 8)
    run = pretrain(tiny_config(tmp_path, data, epochs=2, keep_every=1)).run_dir
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "last")
    shutil.copytree(checkpoints / "epoch_0001", checkpoints / "last")  # the user went back to epoch 1
    assert newest_checkpoint(run).path == checkpoints / "last"
    assert newest_checkpoint(run).train_state["epoch"] == 1
    (checkpoints / "last" / "model.safetensors").write_bytes(b"damaged")
    assert newest_checkpoint(run).path == checkpoints / "epoch_0002"
    for kept in ("epoch_0001", "epoch_0002"):
        (checkpoints / kept / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="none of the checkpoints of .* can be read, and starting afresh would "
                                         "replace them"):
        newest_checkpoint(run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert main(tiny_args(tmp_path, data, "--epochs", "2", "--resume", "auto")) == 2
    assert "none of the checkpoints" in capsys.readouterr().err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # nothing deleted or written
    assert newest_checkpoint(tmp_path / "runs" / "never-ran") is None  # no checkpoint at all: start afresh


# ---------------------------------------------------------------------------------------------- N -> M processes

_WORKER = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    from mae.train.cli import main
    from mae.train.data.datasets import PretrainSamples
    from mae.train.data.shards import ShardSamples

    out, stop_at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rank, seen, calls = os.environ.get("SLURM_PROCID", "0"), [], {"n": 0}
    real_getitem, real_sample, real_step = PretrainSamples.__getitem__, ShardSamples.sample, torch.optim.AdamW.step

    def getitem(self, index):
        seen.append(index)
        return real_getitem(self, index)

    def sample(self, index, files=None):
        seen.append(index)
        return real_sample(self, index, files)

    def step(self, *args, **kwargs):  # only rank 0 is signalled: the group must still agree
        calls["n"] += 1
        if calls["n"] == stop_at and rank == "0":
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args, **kwargs)

    PretrainSamples.__getitem__, ShardSamples.sample, torch.optim.AdamW.step = getitem, sample, step
    code = main(argv)
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(seen, f)
    sys.exit(code)
""")


def _free_slurm_job() -> str:
    """A job id whose derived port is free here."""
    for _ in range(200):
        job = random.randrange(SLURM_PORT_SPAN)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", slurm_port(str(job))))
            except OSError:
                continue
        return str(job)
    raise RuntimeError("no free port in the SLURM range")


def srun(tmp_path: Path, world: int, out: Path, stop_at: int, args: list[str]) -> list[int]:
    """Start ``world`` processes as srun would (SLURM variables only); returns their exit codes."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    base.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", SLURM_NTASKS=str(world), SLURM_JOB_NODELIST="localhost",
                SLURM_JOB_ID=_free_slurm_job(), PATH=str(tmp_path / "no-scontrol") + os.pathsep + base["PATH"])
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(stop_at), *args],
                              env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    codes = []
    for p in procs:
        output, _ = p.communicate(timeout=300)
        codes.append(p.returncode)
        assert p.returncode in (0, PREEMPTED_EXIT), output[-3000:]
    return codes


def data_source(tmp_path: Path, kind: str) -> Path:
    images = write_images(tmp_path / "images", 16)
    if kind == "folder":
        return images
    assert make_shards([str(images), str(tmp_path / "shards"), "--shard-size", "5"]) == 0
    return tmp_path / "shards"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "shards"])
@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 1)])
def test_a_stop_with_n_processes_resumed_with_m_uses_every_sample_once(tmp_path, kind, before, after):
    """16 samples, batch 2: stopped after 8 (global batches of 2 or 4), resumed on the other world size. The group
    is formed from SLURM's variables alone; only rank 0 receives the signal."""
    args = tiny_args(tmp_path, data_source(tmp_path, kind), "--batch-size", "2", "--device", "cpu",
                     "--resume", "auto")
    stop_at = 8 // (2 * before) - 1  # signalled during this step, the group stops after the next: 8 samples in
    assert srun(tmp_path, before, tmp_path / "first", stop_at, args) == [PREEMPTED_EXIT] * before
    run = tmp_path / "runs" / "t"
    state = read_train_checkpoint(run).train_state
    assert state["position"]["samples"] == 8 and state["world_size"] == before
    assert srun(tmp_path, after, tmp_path / "second", 0, args) == [0] * after
    seen = [i % 16 for part, world in (("first", before), ("second", after)) for r in range(world)
            for i in json.loads((tmp_path / f"{part}.rank{r}.json").read_text())]
    assert sorted(seen) == list(range(16))  # every sample of the epoch once across the stop, none twice
    resolved = json.loads((run / "train_config.json").read_text())["resolved"]
    assert resolved["world_size"] == after and resolved["backend"] == "gloo"
    final = read_train_checkpoint(run).train_state
    assert final["epoch"] == 1 and "position" not in final and final["global_step"] == 16 // (2 * after)


def test_a_process_without_a_gpu_of_its_own_is_refused_not_put_on_anothers(monkeypatch):
    """8 processes on a node that shows 4 GPUs used to wrap round (local rank 5 -> cuda:1, shared with rank 1) and
    fail later inside NCCL; one visible GPU per task (srun --gpus-per-task) is the case that takes cuda:0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto", 3) == torch.device("cuda:3") and resolve_device("cuda:2", 7) == torch.device("cuda:2")
    with pytest.raises(ValueError, match="process 5 of this node sees only 4 GPUs"):
        resolve_device("cuda", 5)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", 5) == torch.device("cuda:0")
