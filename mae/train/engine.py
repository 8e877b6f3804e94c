"""Pretraining, in the order things happen: set-up, data, model, resume, epochs, checkpoints, report.

The optimisation itself (accumulation, DDP ``no_sync``, autocast, the grad scaler, the per-step lr, the non-finite
check and skip) is the one training loop of ``mae.runtime.loop``; this module gives it the MAE loss of a batch, saves
what it trains, and handles a divergence: the trainer remembers its state at every epoch end (and at the start), and
when the loop raises ``Diverged`` the run goes back there, with the global random generators as they were, and replays
the epoch on the data order of its new rollback count (``Batches.set_epoch``).

Preemption: while the epochs run, SIGTERM and SIGUSR1 are recorded (``StopSignals``); every process finishes the same
optimizer step, rank 0 writes ``checkpoints/last`` with the epoch's ``position`` (the samples of the epoch's global
order already used, and the steps and loss sum so far), and ``pretrain`` returns with ``stopped_by`` set after leaving
the process group (under SLURM rank 0 then asks for a requeue). A resume skips those samples and finishes the epoch;
on another number of processes the optimizer step counter is re-derived from the position, so the lr schedule
continues at the same point of the run.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import __version__
from .._checks import check_fits, non_finite_names
from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..model import MaskedAutoEncoder
from ..runtime.distributed import DistInfo, barrier, init_distributed, shutdown
from ..runtime.loop import (
    Diverged,
    EpochProgress,
    NonFiniteLossError,
    Schedule,
    StopRequested,
    Trainer,
    resolve_precision,
)
from ..runtime.preemption import StopSignals, request_requeue
from ..runtime.run_folder import RunLock
from .config import TrainConfig, require_train_extra
from .continued import InitWeights, read_init
from .data import Batches, build_data, build_loader, decode_device_of, normalize_on_device
from .online import ONLINE_DIR, OnlineEval, require_eval_extra
from .report import MetricsLog, finish_run, read_metrics, require_tensorboard
from .run import (
    METRICS_FILE,
    TrainCheckpoint,
    capture_rng_state,
    check_not_older,
    check_resumable,
    check_run_dir,
    keep_train_checkpoint,
    prepare_run_dir,
    read_train_checkpoint,
    restore_rng_state,
    run_dir_of,
    write_run_config,
    write_train_checkpoint,
)
from .throughput import Throughput

__all__ = ["NonFiniteLossError", "TrainResult", "build_optimizer", "param_groups", "pretrain"]


@dataclass
class TrainResult:
    run_dir: Path
    model: MaskedAutoEncoder  # the trained model (unwrapped), in train mode
    epochs_done: int
    global_step: int
    last_loss: float | None
    stopped_by: str | None = None  # the signal that stopped the run mid-way (a checkpoint was written), else None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The paper's AdamW groups: weight decay on matrices and the (3-D) cls and mask tokens, none on biases and 1-D
    parameters (LayerNorm weights). Frozen parameters (the sin-cos position tables) never enter the optimizer."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW(betas=(0.9, 0.95)) over ``param_groups``; the fused kernel where torch has one for the model's device."""
    groups = param_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        # No fused kernel for this device/dtype in this torch build: the default (foreach) implementation is exact.
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def pretrain(
    config: TrainConfig, *, resume: str | os.PathLike | TrainCheckpoint | None = None, discard_newer: bool = False
) -> TrainResult:
    """Run (or continue) one pretraining run and return the trained model.

    Works alone or inside ``torchrun`` or ``srun`` (then every process calls it; only rank 0 writes). On SIGTERM or
    SIGUSR1 it saves where it is and returns with ``stopped_by`` set (see the module docstring).

    Args:
        config: the run. When resuming, fields outside ``RESUMABLE_FIELDS`` must equal the checkpoint's.
        resume: a checkpoint directory, a run directory (its ``checkpoints/last``), or a ``TrainCheckpoint``.
        discard_newer: allow resuming from a kept checkpoint older than the run's ``checkpoints/last``, which the
            resumed run then replaces (refused otherwise, so a newer checkpoint is never lost by mistake).

    Raises:
        ValueError: bad configuration, data, output folder or checkpoint (nothing is written in that case).
        NonFiniteLossError: the loss or the weights diverged; the last good checkpoint is left as it was.
    """
    require_train_extra("mae.train.pretrain")
    ckpt = resume if isinstance(resume, TrainCheckpoint) or resume is None else read_train_checkpoint(resume)
    if ckpt is not None:
        check_resumable(config, ckpt)
        run_dir = run_dir_of(config, ckpt)
        check_not_older(ckpt, run_dir, discard_newer=discard_newer)
    else:
        run_dir = Path(config.output_dir) / config.run_name
    # Fail on a bad output folder before any process is started or anything written.
    check_run_dir(run_dir, resuming=ckpt is not None, overwrite=config.overwrite)
    if config.tensorboard:
        require_tensorboard()
    if config.eval_every:
        require_eval_extra()
    info = init_distributed(config.device)
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        result = _run(config, info, run_dir, ckpt)
    finally:
        torch.set_num_threads(threads_before)
        shutdown(info)
    if result.stopped_by is not None and info.is_main:
        line = request_requeue()  # after leaving the group: SLURM ends every task of the job when it requeues
        if line is not None:
            _say(line)
    return result


def _run(config: TrainConfig, info: DistInfo, run_dir: Path, ckpt: TrainCheckpoint | None) -> TrainResult:
    """The run, step by step: data, the run folder (locked), model and optimizer, epochs, report."""
    started = time.perf_counter()
    _check_sizes(config, info)
    init = read_init(config) if config.init is not None and ckpt is None else None  # checked before any write
    decode_on = decode_device_of(config.decode_device, info.device)
    data = build_data(config, probe_remote=info.is_main)  # the shards are there for all if they are for one
    loader = build_loader(data.dataset, batch_size=config.batch_size, num_workers=config.num_workers, rank=info.rank,
                          world_size=info.world_size, seed=config.seed, pin_memory=info.device.type == "cuda",
                          decode_on=decode_on)
    if len(loader) == 0:
        raise ValueError(
            f"{len(data.dataset)} samples per epoch give no full batch of batch_size={config.batch_size} on each of "
            f"{info.world_size} process(es); lower --batch-size or raise --repeat"
        )
    online = None
    if config.eval_every:  # its labelled data is checked before anything is written
        online = OnlineEval(config, data, run_dir, best=ckpt.train_state.get("online") if ckpt is not None else None)
    with contextlib.ExitStack() as held:
        # Inputs are valid: only now is the run folder created (or, with --overwrite, the previous run deleted).
        if info.is_main:
            held.enter_context(RunLock(run_dir, "mae-pretrain"))
            prepare_run_dir(run_dir, resuming=ckpt is not None, overwrite=config.overwrite)
        barrier(info)
        trainer, start_epoch, position = _build_trainer(config, info, len(loader), ckpt, init=init)
        meter = Throughput.start(config, info.device, info.world_size)
        if info.is_main:
            if ckpt is not None:
                _complete_kept_copy(ckpt, run_dir, config.keep_every)
            write_run_config(run_dir, _resolved(config, trainer, data.description, resume=ckpt, init=init,
                                                meter=meter))
            _say(meter.describe_start())
        last_loss, epochs_done = None, start_epoch
        with MetricsLog(run_dir / METRICS_FILE, enabled=info.is_main,
                        tensorboard_dir=str(run_dir / "tensorboard") if config.tensorboard else None) as metrics, \
                StopSignals() as signals:
            epochs = _Epochs(config, trainer, run_dir, metrics, signals, meter, online=online,
                             last_checkpoint=ckpt.path if ckpt is not None else None)
            epochs.remember(start_epoch, position)
            if online is not None and ckpt is None:
                epochs.evaluate_start()
            while epochs_done < config.epochs:
                try:
                    last_loss = epochs.run(loader, epochs_done, position)
                except Diverged as why:
                    epochs_done, position = epochs.roll_back(why)
                    continue
                except StopRequested as stop:
                    epochs.stop(loader, epochs_done, position, stop.progress)
                    return TrainResult(run_dir, trainer.model, epochs_done, trainer.step, last_loss,
                                       stopped_by=signals.received or "a signal to another process")
                epochs_done, position = epochs_done + 1, None
                if config.stop_after_epoch is not None and epochs_done >= config.stop_after_epoch:
                    break
        if info.is_main:
            for line in finish_run(config, trainer.model, run_dir, data, steps=trainer.step,
                                   seconds=time.perf_counter() - started, extra=epochs.summary()):
                _say(line)
        return TrainResult(run_dir, trainer.model, epochs_done, trainer.step, last_loss)


def _check_sizes(config: TrainConfig, info: DistInfo) -> None:
    """Refuse sizes that cannot fit before anything is allocated (an absurd --img-size would get the process
    killed)."""
    model = config.model_config
    device_bytes, host_bytes = model.memory_bytes(4)
    batch = config.batch_size * model.in_chans * model.img_size[0] * model.img_size[1] * 4  # one float32 batch
    what = f"--img-size {config.img_size} with --batch-size {config.batch_size} and --model {config.model}"
    check_fits(host_bytes + batch, what, None)
    check_fits(device_bytes + batch, what, info.device)


def _build_trainer(config: TrainConfig, info: DistInfo, batches_per_epoch: int,
                   ckpt: TrainCheckpoint | None, *, init: InitWeights | None = None
                   ) -> tuple[Trainer, int, dict[str, Any] | None]:
    """Model, optimizer and schedule (the same seed on every process gives the same initial weights), resumed, or
    started from ``init``'s weights (--init). Returns the trainer, the epoch to start from and the position in it
    (None: its start)."""
    schedule = Schedule.plan(batches_per_epoch=batches_per_epoch, accum_iter=config.accum_iter,
                             batch_size=config.batch_size, world_size=info.world_size, epochs=config.epochs,
                             warmup_epochs=config.warmup_epochs, blr=config.blr, lr=config.lr, min_lr=config.min_lr)
    torch.manual_seed(config.seed)
    model = MaskedAutoEncoder.from_config(config.model_config, device=info.device)
    if init is not None:
        init.load_into(model)
    optimizer = build_optimizer(model, lr=schedule.lr, weight_decay=config.weight_decay)
    start_epoch, position = 0, None
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)  # checked to fit in check_resumable
        state = ckpt.train_state
        restore_rng_state(state["rng"])
        start_epoch, position = state["epoch"], state.get("position")
    trainer = Trainer(model, optimizer, schedule, info, precision=resolve_precision(config.precision, info.device),
                      accum_iter=config.accum_iter, compile=config.compile, recovery=config.recovery)
    if ckpt is not None:
        step = state["global_step"]
        if state.get("world_size", info.world_size) != info.world_size:  # another step grid: the same point of the run
            samples = position["samples"] if position is not None else 0
            step = start_epoch * schedule.steps_per_epoch + samples // schedule.effective_batch
        trainer.resume(state["optimizer"], state["scaler"], step, state.get("recovery"))
    return trainer, start_epoch, position


@dataclass
class _Epochs:
    """One epoch after another: train, log, evaluate and save what is due; go back after a divergence."""

    config: TrainConfig
    trainer: Trainer
    run_dir: Path
    metrics: MetricsLog  # metrics.jsonl (and TensorBoard)
    signals: StopSignals  # SIGTERM/SIGUSR1 seen by this process
    meter: Throughput  # images/s, peak memory, MFU
    online: OnlineEval | None = None  # rank 0's online evaluation, when asked for
    last_checkpoint: Path | None = None  # checkpoints/last once it exists
    good_epoch: int = 0  # the epochs done in the state the trainer remembers
    good_rng: dict[str, Any] | None = None  # the global random generators then
    good_position: dict[str, Any] | None = None  # and the position in the epoch (None: its start)

    def run(self, loader: Batches, epoch: int, position: dict[str, Any] | None = None) -> float:
        """Train one epoch (from ``position``, a resumed one), log its summary, and write the checkpoints it is due.
        Returns its mean loss.

        Raises:
            Diverged: too many non-finite steps in a row, or non-finite weights at the end (with recovery on).
            StopRequested: a stop signal; ``stop`` saves the position.
        """
        config, trainer, info = self.config, self.trainer, self.trainer.info
        position = position or {"samples": 0, "steps": 0, "loss_sum": 0.0}
        loader.set_epoch(epoch, trainer.rollbacks, start=position["samples"])
        t0 = time.perf_counter()

        def on_step(record: dict[str, float]) -> None:
            if record["step"] % config.log_every == 0:
                self.metrics.log({"kind": "step", **record, "epoch": epoch + 1})

        def on_skip(record: dict[str, Any]) -> None:
            self.metrics.log({"kind": "skip", **record, "epoch": epoch + 1})
            if info.is_main:
                _say(f"skipped optimizer step {record['step']}: non-finite {record['non_finite']} "
                     f"({record['in_a_row']} in a row; --nan-patience {config.nan_patience})")

        epoch_loss = trainer.train_epoch(loader, partial(_mae_loss, device=info.device), num_batches=len(loader),
                                         epoch=epoch, epochs=config.epochs, progress=config.progress, on_step=on_step,
                                         on_skip=on_skip, stop_hint=lambda: ", " + self.kept(),
                                         should_stop=lambda: self.signals.requested,
                                         so_far=EpochProgress(0, position["steps"], position["loss_sum"]))
        seconds = time.perf_counter() - t0
        done = epoch + 1
        summary = {"kind": "epoch", "epoch": done, "step": trainer.step, "loss": epoch_loss,
                   "lr": trainer.optimizer.param_groups[0]["lr"], "seconds": seconds,
                   "data_wait": loader.wait_seconds / seconds,  # share of the epoch spent waiting for batches
                   **self.meter.epoch(len(loader), seconds)}  # img/s, peak memory, MFU (this process's)
        self.metrics.log(summary)
        if info.is_main:
            _say(f"epoch {done}/{config.epochs}  step {trainer.step}  loss {epoch_loss:.4f}  "
                 f"lr {summary['lr']:.3e}  {seconds:.1f} s  data wait {summary['data_wait']:.0%}  "
                 f"{self.meter.describe(summary)}")
        self.check_finite_weights(done)  # every process: the weights are the same, so is the decision
        self.remember(done)
        best = False  # a new best kNN top-1 to keep (--keep-best)
        if self.online is not None and self.online.due(done) and info.is_main:
            best = self.evaluate(done)
        stopping = config.stop_after_epoch is not None and done >= config.stop_after_epoch
        keep = bool(config.keep_every) and done % config.keep_every == 0
        if info.is_main and (done % config.save_every == 0 or keep or done == config.epochs or stopping):
            self.save(done, keep, best)
        elif best:
            write_train_checkpoint(self.run_dir / "checkpoints" / "best", trainer.model, self.train_state(done))
        barrier(info)
        return epoch_loss

    def remember(self, done: int, position: dict[str, Any] | None = None) -> None:
        """The state a rollback returns to: the trainer's, the global random generators', the epochs done."""
        self.trainer.remember_good_state()
        self.good_epoch, self.good_rng, self.good_position = done, capture_rng_state(), position

    def stop(self, loader: Batches, epoch: int, position: dict[str, Any] | None, progress: EpochProgress) -> None:
        """After a stop signal: rank 0 saves the position in the epoch as checkpoints/last, all processes wait.

        Raises:
            NonFiniteLossError: the weights are not finite: nothing is saved, and the run ends as diverged, not as a
                stop to continue from (every process sees the same weights, so all raise).
        """
        trainer, info = self.trainer, self.trainer.info
        used = (position or {}).get("samples", 0) + progress.batches * loader.global_batch
        position = {"samples": used, "steps": progress.steps, "loss_sum": progress.loss_sum}
        self.metrics.log({"kind": "stop", "step": trainer.step, "epoch": epoch + 1, "samples": used,
                          "signal": self.signals.received})
        try:
            self.check_finite_weights(epoch + 1)
        except Diverged as err:  # with recovery on: no rollback now, the run is stopping
            raise NonFiniteLossError(f"stop signal, but {err}; nothing was saved, {self.kept()}") from None
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"stop signal, but {err}") from None
        if info.is_main:
            self.last_checkpoint = write_train_checkpoint(self.run_dir / "checkpoints" / "last", trainer.model,
                                                          self.train_state(epoch, position))
            _say(f"stop signal: saved epoch {epoch + 1}, {used} samples in, step {trainer.step}, to "
                 f"{self.last_checkpoint}; continue with --resume auto")
        barrier(info)

    def roll_back(self, why: Diverged) -> tuple[int, dict[str, Any] | None]:
        """Go back to the remembered state (the lr lowered once more); returns the epochs done and the position in
        the next epoch there.

        Raises:
            NonFiniteLossError: the run has spent its --max-rollbacks; the last good checkpoint is kept.
        """
        trainer, at = self.trainer, self.trainer.step
        step = trainer.roll_back(str(why), ", " + self.kept())
        restore_rng_state(self.good_rng)
        record = {"kind": "rollback", "step": at, "to_step": step, "to_epoch": self.good_epoch,
                  "rollbacks": trainer.rollbacks, "lr_factor": trainer.lr_factor, "reason": str(why)}
        self.metrics.log(record)
        if trainer.info.is_main:
            _say(f"rollback {trainer.rollbacks}/{self.config.max_rollbacks}: {why}; back to step {step} (epoch "
                 f"{self.good_epoch}), lr x{trainer.lr_factor:g} from now on, another data order")
        return self.good_epoch, self.good_position

    def evaluate_start(self) -> None:
        """Rank 0 evaluates the starting weights (random, or --init's) as epoch 0: the baseline the evaluations
        after training are read against. It is logged, never kept as the best; the other processes wait."""
        if self.trainer.info.is_main:
            self.evaluate(0)
        barrier(self.trainer.info)

    def evaluate(self, done: int) -> bool:
        """Rank 0: the online evaluation, logged. Returns whether it is a new best to keep (--keep-best)."""
        record = self.online(self.trainer.model, done, self.trainer.precision)
        self.metrics.log({**record, "step": self.trainer.step})
        when = f"epoch {done}" if done else "before training (epoch 0)"
        _say(f"online eval, {when}: kNN top-1 {record['knn_top1']:.2f}%  masked-patch PSNR "
             f"{record['recon_psnr']:.2f} dB  ({record['seconds']:.1f} s; {record['figure']})")
        return record["improved"] and self.config.keep_best

    def train_state(self, done: int, position: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a checkpoint saves beside the weights (the state of the run after ``done`` epochs, and ``position``
        samples into the next one)."""
        trainer = self.trainer
        return {
            "optimizer": trainer.optimizer.state_dict(), "scaler": trainer.scaler.state_dict(), "epoch": done,
            "global_step": trainer.step, "rng": capture_rng_state(), "run_config": self.config.to_dict(),
            "recovery": trainer.recovery_state(), "world_size": trainer.info.world_size,
            **({"position": position} if position is not None else {}),
            **({"online": self.online.state()} if self.online is not None else {}),
        }

    def save(self, done: int, keep: bool, best: bool) -> None:
        """Replace checkpoints/last; on a keep epoch also make the kept copy checkpoints/epoch_XXXX, on a new best
        checkpoints/best (copies share the files of last)."""
        checkpoints = self.run_dir / "checkpoints"
        self.last_checkpoint = write_train_checkpoint(checkpoints / "last", self.trainer.model, self.train_state(done))
        if keep:
            keep_train_checkpoint(self.last_checkpoint, checkpoints / f"epoch_{done:04d}")
        if best:
            keep_train_checkpoint(self.last_checkpoint, checkpoints / "best")

    def check_finite_weights(self, done: int) -> None:
        """Never keep non-finite weights as a good state (a finite loss does not guarantee them)."""
        bad = non_finite_names(self.trainer.model.state_dict())
        if not bad:
            return
        what = f"the weights became non-finite during epoch {done} ({len(bad)} tensor(s), e.g. {bad[0]})"
        if self.trainer.recovery is not None:
            raise Diverged(what)
        raise NonFiniteLossError(f"{what} although the loss stayed finite; nothing was saved, {self.kept()}. Lower "
                                 "--blr/--lr or use --precision fp32")

    def summary(self) -> dict[str, Any]:
        """What summary.json adds about divergence and online evaluation (the events of the whole run, resumes
        included, from metrics.jsonl)."""
        records = read_metrics(self.run_dir / METRICS_FILE)
        out: dict[str, Any] = {"recovery": {
            "rollbacks": self.trainer.rollbacks, "lr_factor": self.trainer.lr_factor,
            "skipped_steps": [r["step"] for r in records if r.get("kind") == "skip"],
            "rollback_events": [{k: r[k] for k in ("step", "to_step", "to_epoch", "reason")}
                                for r in records if r.get("kind") == "rollback"],
        }}
        if self.online is not None:
            evals = [r for r in records if r.get("kind") == "eval"]
            scores = [{k: r[k] for k in ("epoch", "knn_top1", "recon_mse", "recon_psnr")} for r in evals]
            out["online"] = {"best_knn_top1": self.online.best["knn_top1"], "best_epoch": self.online.best["epoch"],
                             "start": next((r for r in scores if r["epoch"] == 0), None),
                             "last": scores[-1] if scores else None, "figures": ONLINE_DIR}
        return out

    def kept(self) -> str:
        """Where the last good state is, for the messages of a stop."""
        if self.last_checkpoint is not None:
            return f"the last good checkpoint is kept at {self.last_checkpoint}"
        return "no checkpoint had been written yet (start again rather than --resume)"


def _mae_loss(forward: Any, batch: tuple[torch.Tensor, torch.Tensor], *, device: torch.device) -> torch.Tensor:
    """The MAE loss of a uint8 batch and its masking noise, normalised on the device (training's fast path: the
    decoder runs its last block and head on the removed patches only, same loss and gradients)."""
    imgs, noise = batch
    imgs = normalize_on_device(imgs.to(device, non_blocking=True), IMAGENET_MEAN, IMAGENET_STD)  # (B, C, H, W)
    return forward(imgs, noise=noise.to(device, non_blocking=True), loss_only=True).loss


def _complete_kept_copy(ckpt: TrainCheckpoint, run_dir: Path, keep_every: int) -> None:
    """A run killed between writing ``last`` and keeping its copy would never get that copy: make it now."""
    done = ckpt.train_state["epoch"]
    kept = run_dir / "checkpoints" / f"epoch_{done:04d}"
    whole = "position" not in ckpt.train_state  # a mid-epoch checkpoint is no epoch's copy
    if keep_every and done % keep_every == 0 and whole and not kept.exists() and ckpt.path.parent == kept.parent:
        keep_train_checkpoint(ckpt.path, kept)


def _say(line: str) -> None:
    """Print a line without breaking a progress bar."""
    from tqdm.auto import tqdm  # the train extra

    tqdm.write(line)


def _resolved(config: TrainConfig, trainer: Trainer, data: dict, *, resume: TrainCheckpoint | None,
              init: InitWeights | None = None, meter: Throughput | None = None) -> dict[str, Any]:
    schedule, info = trainer.schedule, trainer.info
    return {
        "config": config.to_dict(),
        "resolved": {
            "device": str(info.device), "precision": trainer.precision, "world_size": info.world_size,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "threads": torch.get_num_threads(),
            "effective_batch": schedule.effective_batch, "lr": schedule.lr, "steps_per_epoch": schedule.steps_per_epoch,
            "total_steps": schedule.total_steps, "warmup_steps": schedule.warmup_steps,
            "resumed_from": str(resume.path) if resume is not None else None,
            "initialised_from": init.record if init is not None else None,  # --init: where the weights came from
            **({"step_gflops_per_image": meter.flops_per_step / meter.batch_size / 1e9,
                "peak_tflops": meter.peak_tflops, "peak_tflops_source": meter.peak_source} if meter else {}),
        },
        "model": config.model_config.to_dict(),
        "data": data,
        "versions": {"mae-pytorch": __version__, "torch": torch.__version__},
    }
