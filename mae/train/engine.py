"""The pretraining loop, in the order things happen: set-up, data, model, resume, epochs, checkpoints, figures.

One optimizer step = ``accum_iter`` micro-batches. Within an epoch of ``n`` micro-batches the last group may be
shorter (``n % accum_iter``); it still steps, with its loss divided by its own length so the gradient is a mean.
Under DDP only the last micro-batch of a group synchronises gradients (``no_sync`` for the others).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import __version__
from .._checks import check_fits
from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..model import MaskedAutoEncoder
from .checkpoint import (
    TrainCheckpoint,
    capture_rng_state,
    keep_train_checkpoint,
    read_train_checkpoint,
    restore_rng_state,
    write_train_checkpoint,
)
from .config import TrainConfig
from .data import Batches, build_data, build_loader, normalize_on_device
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from .extra import require_train_extra
from .metrics import MetricsLog, require_tensorboard
from .optim import build_optimizer
from .resume import check_not_older, check_resumable, run_dir_of
from .rundir import METRICS_FILE, RunLock, check_run_dir, prepare_run_dir, write_run_config
from .schedule import lr_at_step, scaled_lr
from .summary import finish_run

__all__ = ["NonFiniteLossError", "TrainResult", "pretrain", "train_one_epoch"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The loss (or, after a step, the weights) became NaN or infinite; the run stopped without saving them."""


@dataclass
class TrainResult:
    run_dir: Path
    model: MaskedAutoEncoder  # the trained model (unwrapped), in train mode
    epochs_done: int
    global_step: int
    last_loss: float | None


@dataclass
class _Plan:
    """What the config resolves to on this machine."""

    device: torch.device
    precision: str
    world_size: int
    effective_batch: int
    lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    def lr_at(self, step: int, min_lr: float) -> float:
        return lr_at_step(step, base_lr=self.lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                          min_lr=min(min_lr, self.lr))


@dataclass
class _Loop:
    """What the epochs share: the run, the model and its optimizer, the log, and the step counter they advance."""

    config: TrainConfig
    plan: _Plan
    info: DistInfo
    model: MaskedAutoEncoder  # unwrapped: what checkpoints save
    forward: Any  # the model as called: DDP-wrapped and/or compiled
    ddp: DDP | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    metrics: MetricsLog | None = None
    global_step: int = 0
    start_epoch: int = 0
    last_checkpoint: Path | None = None  # checkpoints/last once it exists


def pretrain(
    config: TrainConfig, *, resume: str | os.PathLike | TrainCheckpoint | None = None, discard_newer: bool = False
) -> TrainResult:
    """Run (or continue) one pretraining run and return the trained model.

    Works alone or inside ``torchrun`` (then every process calls it; only rank 0 writes).

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
    info = init_distributed(config.device)
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, info, run_dir, ckpt)
    finally:
        torch.set_num_threads(threads_before)
        shutdown(info)


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _run(config: TrainConfig, info: DistInfo, run_dir: Path, ckpt: TrainCheckpoint | None) -> TrainResult:
    """The run, step by step: data, run folder (locked), then ``_train``."""
    started = time.perf_counter()
    _check_sizes(config, info)
    data, loader = _build_loader(config, info)
    with contextlib.ExitStack() as held:
        # Inputs are valid: only now is the run folder created (or, with --overwrite, the previous run deleted).
        if info.is_main:
            held.enter_context(RunLock(run_dir))
            prepare_run_dir(run_dir, resuming=ckpt is not None, overwrite=config.overwrite)
        barrier(info)
        return _train(config, info, run_dir, ckpt, (data, loader), started)


def _train(config: TrainConfig, info: DistInfo, run_dir: Path, ckpt: TrainCheckpoint | None,
           inputs: tuple[Any, Batches], started: float) -> TrainResult:
    """Plan, model, records, epochs, then summary and figures."""
    data, loader = inputs
    plan = _make_plan(config, info, len(loader))
    loop = _build_loop(config, plan, info, ckpt)
    if info.is_main and ckpt is not None:
        _complete_kept_copy(ckpt, run_dir, config.keep_every)
    if info.is_main:
        write_run_config(run_dir, _resolved(config, plan, data.description, resume=ckpt))
    loop.metrics = MetricsLog(run_dir / METRICS_FILE, enabled=info.is_main,
                              tensorboard_dir=str(run_dir / "tensorboard") if config.tensorboard else None)
    last_loss, epochs_done = None, loop.start_epoch
    try:
        for epoch in range(loop.start_epoch, config.epochs):
            loader.set_epoch(epoch)
            last_loss = _epoch(loop, loader, epoch, run_dir)
            epochs_done = epoch + 1
            if config.stop_after_epoch is not None and epochs_done >= config.stop_after_epoch:
                break
    finally:
        loop.metrics.close()
    if info.is_main:
        for line in finish_run(config, loop.model, run_dir, data, steps=loop.global_step,
                               seconds=time.perf_counter() - started):
            _say(line)
    return TrainResult(run_dir, loop.model, epochs_done, loop.global_step, last_loss)


def _check_sizes(config: TrainConfig, info: DistInfo) -> None:
    """Refuse sizes that cannot fit before anything is allocated (an absurd --img-size got the process killed)."""
    model = config.model_config
    device_bytes, host_bytes = model.memory_bytes(4)
    batch = config.batch_size * model.in_chans * model.img_size[0] * model.img_size[1] * 4  # one float32 batch
    what = f"--img-size {config.img_size} with --batch-size {config.batch_size} and --model {config.model}"
    check_fits(host_bytes + batch, what, None)
    check_fits(device_bytes + batch, what, info.device)


def _build_loader(config: TrainConfig, info: DistInfo) -> tuple[Any, Batches]:
    """Every process reads its own part; ``loader.set_epoch`` reshuffles per epoch. Batches are uint8."""
    data = build_data(config)
    loader = build_loader(data.dataset, batch_size=config.batch_size, num_workers=config.num_workers, rank=info.rank,
                          world_size=info.world_size, seed=config.seed, pin_memory=info.device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(
            f"{len(data.dataset)} samples per epoch give no full batch of batch_size={config.batch_size} on each of "
            f"{info.world_size} process(es); lower --batch-size or raise --repeat"
        )
    return data, loader


def _make_plan(config: TrainConfig, info: DistInfo, batches_per_epoch: int) -> _Plan:
    steps_per_epoch = math.ceil(batches_per_epoch / config.accum_iter)  # the last, shorter group still steps
    effective_batch = config.batch_size * config.accum_iter * info.world_size
    return _Plan(
        device=info.device, precision=_resolve_precision(config.precision, info.device), world_size=info.world_size,
        effective_batch=effective_batch,
        lr=config.lr if config.lr is not None else scaled_lr(config.blr, effective_batch),
        steps_per_epoch=steps_per_epoch, total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
    )


def _build_loop(config: TrainConfig, plan: _Plan, info: DistInfo, ckpt: TrainCheckpoint | None) -> _Loop:
    """Model, optimizer and grad scaler (the same seed on every process gives the same initial weights), resumed."""
    torch.manual_seed(config.seed)
    model = MaskedAutoEncoder.from_config(config.model_config, device=plan.device)
    optimizer = build_optimizer(model, lr=plan.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(plan.device.type, enabled=plan.precision == "fp16")
    start_epoch, global_step = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)  # checked to fit in check_resumable
        state = ckpt.train_state
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = state["epoch"], state["global_step"]
        restore_rng_state(state["rng"])
    ddp = DDP(model, device_ids=[plan.device] if plan.device.type == "cuda" else None) if info.enabled else None
    forward = ddp if ddp is not None else model
    if config.compile:
        forward = torch.compile(forward)
    return _Loop(config, plan, info, model, forward, ddp, optimizer, scaler, global_step=global_step,
                 start_epoch=start_epoch, last_checkpoint=ckpt.path if ckpt is not None else None)


def _epoch(loop: _Loop, loader: Batches, epoch: int, run_dir: Path) -> float:
    """Train one epoch, log its summary, and write the checkpoints it is due. Returns its mean loss."""
    config, info = loop.config, loop.info
    t0 = time.perf_counter()
    epoch_loss = train_one_epoch(loop, loader, epoch)
    seconds = time.perf_counter() - t0
    images = len(loader) * config.batch_size * info.world_size
    done = epoch + 1
    summary = {"kind": "epoch", "epoch": done, "step": loop.global_step, "loss": epoch_loss,
               "lr": loop.optimizer.param_groups[0]["lr"], "img_per_s": images / seconds, "seconds": seconds,
               "data_wait": loader.wait_seconds / seconds}  # share of the epoch spent waiting for batches
    loop.metrics.log(summary)
    if info.is_main:
        _say(f"epoch {done}/{config.epochs}  step {loop.global_step}  loss {epoch_loss:.4f}  "
             f"lr {summary['lr']:.3e}  {summary['img_per_s']:.1f} img/s  {seconds:.1f} s  "
             f"data wait {summary['data_wait']:.0%}")
    stopping = config.stop_after_epoch is not None and done >= config.stop_after_epoch
    keep = bool(config.keep_every) and done % config.keep_every == 0
    if done % config.save_every == 0 or keep or done == config.epochs or stopping:
        _check_finite_weights(loop, done)  # every process: the weights are the same, so is the decision
        if info.is_main:
            _save_checkpoints(loop, run_dir, done, keep)
    barrier(info)
    return epoch_loss


def _save_checkpoints(loop: _Loop, run_dir: Path, done: int, keep: bool) -> None:
    """Replace checkpoints/last; on a keep epoch also make the kept copy checkpoints/epoch_XXXX."""
    train_state = {
        "optimizer": loop.optimizer.state_dict(), "scaler": loop.scaler.state_dict(), "epoch": done,
        "global_step": loop.global_step, "rng": capture_rng_state(), "run_config": loop.config.to_dict(),
    }
    last = write_train_checkpoint(run_dir / "checkpoints" / "last", loop.model, train_state)
    loop.last_checkpoint = last
    if keep:
        keep_train_checkpoint(last, run_dir / "checkpoints" / f"epoch_{done:04d}")


def _complete_kept_copy(ckpt: TrainCheckpoint, run_dir: Path, keep_every: int) -> None:
    """A run killed between writing ``last`` and keeping its copy would never get that copy: make it now."""
    done = ckpt.train_state["epoch"]
    kept = run_dir / "checkpoints" / f"epoch_{done:04d}"
    if keep_every and done % keep_every == 0 and not kept.exists() and ckpt.path.parent == kept.parent:
        keep_train_checkpoint(ckpt.path, kept)


def _check_finite_weights(loop: _Loop, done: int) -> None:
    """Never save non-finite weights as the last good checkpoint (a finite loss does not guarantee finite weights)."""
    bad = [k for k, v in loop.model.state_dict().items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise NonFiniteLossError(
            f"the weights became non-finite during epoch {done} ({len(bad)} tensor(s), e.g. {bad[0]}) although the "
            f"loss stayed finite; nothing was saved, {_kept(loop)}. Lower --blr/--lr or use --precision fp32"
        )


def _say(line: str) -> None:
    """Print a line without breaking a progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(line)


def _kept(loop: _Loop) -> str:
    if loop.last_checkpoint is not None:
        return f"the last good checkpoint is kept at {loop.last_checkpoint}"
    return "no checkpoint had been written yet (start again rather than --resume)"


def train_one_epoch(loop: _Loop, loader: Batches, epoch: int) -> float:
    """One pass over ``loader``; advances ``loop.global_step``. Returns the mean loss of its optimizer steps."""
    from tqdm.auto import tqdm  # the train extra's packages are imported where used (mae.train.extra)

    config, plan = loop.config, loop.plan
    n = len(loader)
    bar = tqdm(total=math.ceil(n / config.accum_iter), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
               # None: shown on a terminal only, so log files of batch jobs keep just the epoch lines
               disable=None if config.progress and loop.info.is_main else True, leave=False, dynamic_ncols=True)
    group_loss = torch.zeros((), device=plan.device)
    loss_sum, steps, t_step, images = 0.0, 0, time.perf_counter(), 0
    for i, (imgs, noise) in enumerate(loader):
        first = i - i % config.accum_iter
        group = min(config.accum_iter, n - first)  # micro-batches in this optimizer step
        last_micro = i == first + group - 1
        if i == first:
            lr = plan.lr_at(loop.global_step, config.min_lr)
            for g in loop.optimizer.param_groups:
                g["lr"] = lr
        group_loss += _micro_step(loop, imgs, noise, group, sync=last_micro)
        images += imgs.shape[0] * loop.info.world_size
        if not last_micro:
            continue
        # Every process takes the same decision: check the loss averaged over processes before stepping.
        step_loss = (all_reduce_sum(group_loss / group, loop.info) / loop.info.world_size).item()
        if not math.isfinite(step_loss):
            bar.close()
            raise _non_finite(loop, step_loss, f"epoch {epoch + 1}, batch {i + 1} of {n}")
        _optimizer_step(loop)
        group_loss.zero_()
        now = time.perf_counter()
        img_per_s = images / (now - t_step)
        t_step, images = now, 0
        loss_sum, steps = loss_sum + step_loss, steps + 1
        if loop.global_step % config.log_every == 0:
            loop.metrics.log({"kind": "step", "step": loop.global_step, "epoch": epoch + 1, "loss": step_loss,
                              "lr": lr, "img_per_s": img_per_s})
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.1f}")
        bar.update()
    bar.close()
    return loss_sum / max(steps, 1)


def _micro_step(loop: _Loop, imgs: torch.Tensor, noise: torch.Tensor, group: int, *, sync: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch (gradients all-reduced only when ``sync``); returns its loss."""
    plan = loop.plan
    autocast_dtype = _AUTOCAST_DTYPES.get(plan.precision)
    imgs = normalize_on_device(imgs.to(plan.device, non_blocking=True), IMAGENET_MEAN, IMAGENET_STD)  # (B, C, H, W)
    noise = noise.to(plan.device, non_blocking=True)  # (B, L)
    no_sync = loop.ddp.no_sync() if loop.ddp is not None and not sync else contextlib.nullcontext()
    with no_sync:
        with torch.autocast(plan.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loop.forward(imgs, noise=noise, loss_only=True).loss  # fast path: same loss and gradients
        loop.scaler.scale(loss / group).backward()
    return loss.detach().float()


def _optimizer_step(loop: _Loop) -> None:
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.global_step += 1


def _non_finite(loop: _Loop, step_loss: float, where: str) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"non-finite loss {step_loss} at optimizer step {loop.global_step + 1} ({where}); stopping without "
        f"applying it, {_kept(loop)}. Lower --blr/--lr or use --precision fp32"
    )


def _resolved(config: TrainConfig, plan: _Plan, data: dict, *, resume: TrainCheckpoint | None) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "resolved": {
            "device": str(plan.device), "precision": plan.precision, "world_size": plan.world_size,
            "threads": torch.get_num_threads(),
            "effective_batch": plan.effective_batch, "lr": plan.lr, "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
            "resumed_from": str(resume.path) if resume is not None else None,
        },
        "model": config.model_config.to_dict(),
        "data": data,
        "versions": {"mae-pytorch": __version__, "torch": torch.__version__},
    }
