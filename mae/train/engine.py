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
from tqdm.auto import tqdm

from .. import __version__
from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..model import MaskedAutoEncoder
from .checkpoint import (
    Checkpoint,
    capture_rng_state,
    link_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import RESUMABLE_FIELDS, TrainConfig
from .data import build_data, build_loader, normalize_on_device
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from .figures import LOSS_FIGURE, RECONSTRUCTION_FIGURE, save_figures
from .metrics import MetricsLog, require_tensorboard
from .optim import build_optimizer
from .rundir import METRICS_FILE, RUN_CONFIG_FILE, check_run_dir, prepare_run_dir, write_json_atomic
from .schedule import lr_at_step, scaled_lr

__all__ = ["NonFiniteLossError", "TrainResult", "pretrain", "train_one_epoch"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before applying that step."""


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


def pretrain(config: TrainConfig, *, resume: str | os.PathLike | Checkpoint | None = None) -> TrainResult:
    """Run (or continue) one pretraining run and return the trained model.

    Works alone or inside ``torchrun`` (then every process calls it; only rank 0 writes).

    Args:
        config: the run. When resuming, fields outside ``RESUMABLE_FIELDS`` must equal the checkpoint's.
        resume: a checkpoint directory, a run directory (its ``checkpoints/last``), or a loaded ``Checkpoint``.

    Raises:
        ValueError: bad configuration, data, output folder or checkpoint (nothing is written in that case).
        NonFiniteLossError: the loss diverged; the last good checkpoint is left as it was.
    """
    ckpt = resume if isinstance(resume, Checkpoint) or resume is None else load_checkpoint(resume)
    if ckpt is not None:
        _check_resumable(config, ckpt)
        parent = ckpt.path.parent
        run_dir = parent.parent if parent.name == "checkpoints" else Path(config.output_dir) / config.run_name
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


def _check_resumable(config: TrainConfig, ckpt: Checkpoint) -> None:
    saved = TrainConfig.from_dict(ckpt.train_state["run_config"])
    ignored = RESUMABLE_FIELDS | {"output_dir", "name", "overwrite"}
    changed = [(f, getattr(saved, f), getattr(config, f)) for f in saved.to_dict()
               if f not in ignored and getattr(saved, f) != getattr(config, f)]
    if changed:
        details = "; ".join(f"{f}: checkpoint {a!r}, given {b!r}" for f, a, b in changed)
        raise ValueError(
            f"cannot change these settings when resuming from {str(ckpt.path)!r}: {details}. "
            f"Only {sorted(RESUMABLE_FIELDS)} may differ"
        )
    done = ckpt.train_state["epoch"]
    if done >= config.epochs:
        raise ValueError(
            f"checkpoint {str(ckpt.path)!r} has already finished {done} of epochs={config.epochs}; "
            "pass a larger --epochs to train further"
        )


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _run(config: TrainConfig, info: DistInfo, run_dir: Path, ckpt: Checkpoint | None) -> TrainResult:
    device = info.device
    model_cfg = config.model_config

    # ---- data: every process sees its own part; loader.set_epoch reshuffles per epoch. Batches are uint8.
    data = build_data(config, model_cfg.num_patches)
    loader = build_loader(data.dataset, batch_size=config.batch_size, num_workers=config.num_workers, rank=info.rank,
                          world_size=info.world_size, seed=config.seed, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(
            f"{len(data.dataset)} samples per epoch give no full batch of batch_size={config.batch_size} on each of "
            f"{info.world_size} process(es); lower --batch-size or raise --repeat"
        )
    # Inputs are valid: only now is the run folder created (or, with --overwrite, the previous run deleted).
    if info.is_main:
        prepare_run_dir(run_dir, resuming=ckpt is not None, overwrite=config.overwrite)
    barrier(info)
    steps_per_epoch = math.ceil(len(loader) / config.accum_iter)  # the last, shorter group still steps
    effective_batch = config.batch_size * config.accum_iter * info.world_size
    plan = _Plan(
        device=device, precision=_resolve_precision(config.precision, device), world_size=info.world_size,
        effective_batch=effective_batch,
        lr=config.lr if config.lr is not None else scaled_lr(config.blr, effective_batch),
        steps_per_epoch=steps_per_epoch, total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
    )

    # ---- model, optimizer, grad scaler (the same seed on every process gives the same initial weights)
    torch.manual_seed(config.seed)
    model = MaskedAutoEncoder.from_config(model_cfg, device=device)
    optimizer = build_optimizer(model, lr=plan.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=plan.precision == "fp16")
    start_epoch, global_step = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        state = ckpt.train_state
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = state["epoch"], state["global_step"]
        restore_rng_state(state["rng"])

    ddp = DDP(model, device_ids=[device] if device.type == "cuda" else None) if info.enabled else None
    forward = ddp if ddp is not None else model
    if config.compile:
        forward = torch.compile(forward)

    if info.is_main:
        write_json_atomic(run_dir / RUN_CONFIG_FILE, _resolved(config, plan, model_cfg, data.description, resume=ckpt))
    metrics = MetricsLog(run_dir / METRICS_FILE, enabled=info.is_main,
                         tensorboard_dir=str(run_dir / "tensorboard") if config.tensorboard else None)
    last_ckpt = run_dir / "checkpoints" / "last"
    last_loss, epochs_done = None, start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            loader.set_epoch(epoch)
            t0 = time.perf_counter()
            global_step, epoch_loss = train_one_epoch(
                forward, loader, optimizer, scaler, plan=plan, config=config, info=info, ddp=ddp, epoch=epoch,
                global_step=global_step, metrics=metrics, last_checkpoint=last_ckpt if last_ckpt.exists() else None,
            )
            last_loss = epoch_loss
            seconds = time.perf_counter() - t0
            images = len(loader) * config.batch_size * info.world_size
            done = epochs_done = epoch + 1
            summary = {"kind": "epoch", "epoch": done, "step": global_step, "loss": epoch_loss,
                       "lr": optimizer.param_groups[0]["lr"], "img_per_s": images / seconds, "seconds": seconds,
                       "data_wait": loader.wait_seconds / seconds}  # share of the epoch spent waiting for batches
            metrics.log(summary)
            if info.is_main:
                tqdm.write(f"epoch {done}/{config.epochs}  step {global_step}  loss {epoch_loss:.4f}  "
                           f"lr {summary['lr']:.3e}  {summary['img_per_s']:.1f} img/s  {seconds:.1f} s  "
                           f"data wait {summary['data_wait']:.0%}")
            stopping = config.stop_after_epoch is not None and done >= config.stop_after_epoch
            keep = bool(config.keep_every) and done % config.keep_every == 0
            if info.is_main and (done % config.save_every == 0 or keep or done == config.epochs or stopping):
                train_state = {
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": done,
                    "global_step": global_step, "rng": capture_rng_state(), "run_config": config.to_dict(),
                }
                save_checkpoint(last_ckpt, model, train_state)
                if keep:
                    link_checkpoint(last_ckpt, run_dir / "checkpoints" / f"epoch_{done:04d}")
            barrier(info)
            if stopping:
                break
    finally:
        metrics.close()
    if info.is_main and config.figures:
        save_figures(run_dir, model, data.figure_images, caption=data.figure_caption, seed=config.seed)
        tqdm.write(f"loss curve: {run_dir / LOSS_FIGURE}\nreconstructions: {run_dir / RECONSTRUCTION_FIGURE}")
    if info.is_main:
        tqdm.write(f"run folder: {run_dir}")
    return TrainResult(run_dir, model, epochs_done, global_step, last_loss)


def train_one_epoch(
    forward, loader, optimizer, scaler, *, plan: _Plan, config: TrainConfig, info: DistInfo, ddp: DDP | None,
    epoch: int, global_step: int, metrics: MetricsLog, last_checkpoint: Path | None = None,
) -> tuple[int, float]:
    """One pass over ``loader``. Returns the global step after it and the mean loss of its optimizer steps."""
    n = len(loader)
    autocast_dtype = _AUTOCAST_DTYPES.get(plan.precision)
    bar = tqdm(total=math.ceil(n / config.accum_iter), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
               # None: shown on a terminal only, so log files of batch jobs keep just the epoch lines
               disable=None if config.progress and info.is_main else True, leave=False, dynamic_ncols=True)
    group_loss = torch.zeros((), device=plan.device)
    loss_sum, steps, t_step, images = 0.0, 0, time.perf_counter(), 0
    for i, (imgs, noise) in enumerate(loader):
        first = i - i % config.accum_iter
        group = min(config.accum_iter, n - first)  # micro-batches in this optimizer step
        last_micro = i == first + group - 1
        if i == first:
            lr = plan.lr_at(global_step, config.min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
        imgs = normalize_on_device(imgs.to(plan.device, non_blocking=True), IMAGENET_MEAN, IMAGENET_STD)  # (B, C, H, W)
        noise = noise.to(plan.device, non_blocking=True)  # (B, L)
        # Gradients are all-reduced only on the group's last micro-batch.
        sync = ddp.no_sync() if ddp is not None and not last_micro else contextlib.nullcontext()
        with sync:
            with torch.autocast(plan.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = forward(imgs, noise=noise, loss_only=True).loss  # fast path: same loss and gradients
            scaler.scale(loss / group).backward()
        group_loss += loss.detach().float()
        images += imgs.shape[0] * info.world_size
        if not last_micro:
            continue

        # Every process takes the same decision: check the loss averaged over processes before stepping.
        step_loss = (all_reduce_sum(group_loss / group, info) / info.world_size).item()
        if not math.isfinite(step_loss):
            bar.close()
            kept = f"the last good checkpoint is kept at {last_checkpoint}" if last_checkpoint else (
                "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"non-finite loss {step_loss} at optimizer step {global_step + 1} (epoch {epoch + 1}, batch {i + 1} of "
                f"{n}); stopping without applying it, {kept}. Lower --blr/--lr or use --precision fp32"
            )
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        group_loss.zero_()
        now = time.perf_counter()
        img_per_s = images / (now - t_step)
        t_step, images = now, 0
        global_step += 1
        loss_sum, steps = loss_sum + step_loss, steps + 1
        if global_step % config.log_every == 0:
            metrics.log({"kind": "step", "step": global_step, "epoch": epoch + 1, "loss": step_loss, "lr": lr,
                         "img_per_s": img_per_s})
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.1f}")
        bar.update()
    bar.close()
    return global_step, loss_sum / max(steps, 1)


def _resolved(config: TrainConfig, plan: _Plan, model_cfg, data: dict, *, resume: Checkpoint | None) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "resolved": {
            "device": str(plan.device), "precision": plan.precision, "world_size": plan.world_size,
            "threads": torch.get_num_threads(),
            "effective_batch": plan.effective_batch, "lr": plan.lr, "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
            "resumed_from": str(resume.path) if resume is not None else None,
        },
        "model": model_cfg.to_dict(),
        "data": data,
        "versions": {"mae-pytorch": __version__, "torch": torch.__version__},
    }
