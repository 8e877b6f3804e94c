"""The one training loop: pretraining, the linear probe and fine-tuning all step through ``Trainer.train_epoch``.

One optimizer step = ``accum_iter`` micro-batches. Within an epoch of ``n`` micro-batches the last group may be
shorter (``n % accum_iter``); it still steps, with its loss divided by its own length so the gradient is a mean.
Under DDP only the last micro-batch of a group synchronises gradients (``no_sync`` for the others). The learning
rate is a pure function of the optimizer step (``lr_at_step``), set before each step on every parameter group times
the group's ``lr_scale`` (layer-wise decay); a checkpoint's step number is all the schedule needs to resume exactly.
A step is non-finite when its loss (averaged over the processes) or, without a grad scaler, the norm of its
gradients is NaN or infinite; it is checked before ``scaler.step``, and the sum over the processes makes every process
take the same decision. Without ``recovery`` the first non-finite step stops the loop (``NonFiniteLossError``; the
linear probe and fine-tuning run so). With a ``Recovery`` policy (pretraining's default):

- a non-finite step is skipped: its gradients are dropped, and no parameter, optimizer or scaler state changes
  (the step counter, i.e. the position in the lr schedule and the data, still moves on);
- after ``patience`` skipped steps in a row the loop raises ``Diverged``; the caller calls ``roll_back``, which
  restores the state kept by ``remember_good_state`` (weights, optimizer, scaler, step) and multiplies the lr by
  ``lr_factor`` for the rest of the run (``lr_factor ** rollbacks`` in all), then replays the lost steps on other
  data; once ``max_rollbacks`` are spent, ``roll_back`` raises ``NonFiniteLossError`` instead.

Stopping on request (``should_stop``, e.g. ``StopSignals.requested`` after SIGTERM): the request of every process
travels in the same all-reduce as the loss, so all of them finish the same optimizer step and then raise
``StopRequested`` together, carrying the epoch's ``EpochProgress``. A caller resuming the epoch passes that progress
back (``so_far``) with the remaining batches only.

With fp16 the grad scaler already skips a step whose scaled gradients overflow, and lowers its scale: that is dynamic
loss scaling at work, not divergence, so only the loss is checked there.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .._checks import check_finite, check_non_negative_int, check_positive_int
from .distributed import DistInfo, all_reduce_sum

__all__ = ["PRECISIONS", "Diverged", "EpochProgress", "NonFiniteLossError", "Recovery", "Schedule", "StopRequested",
           "Trainer", "autocast", "lr_at_step", "resolve_precision", "scaled_lr"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The loss (or, after a step, the weights) became NaN or infinite; the run stopped without applying it."""


class Diverged(NonFiniteLossError):
    """``Recovery.patience`` optimizer steps in a row were non-finite: time to ``Trainer.roll_back``."""


@dataclass(frozen=True)
class EpochProgress:
    """How far an epoch got: micro-batches consumed, optimizer steps taken and the sum of their losses."""

    batches: int = 0
    steps: int = 0
    loss_sum: float = 0.0


class StopRequested(Exception):  # noqa: N818 (a stop asked for, not an error)
    """Every process finished the same optimizer step and stopped because ``should_stop`` asked on one of them."""

    def __init__(self, progress: EpochProgress) -> None:
        super().__init__(f"stopped on request after {progress.batches} micro-batches of the epoch")
        self.progress = progress


@dataclass(frozen=True)
class Recovery:
    """What the loop does about non-finite steps (see the module docstring).

    Args:
        patience: skipped steps in a row that make the loop raise ``Diverged``.
        max_rollbacks: rollbacks a run may make; the next divergence stops it.
        lr_factor: each rollback multiplies the lr by this, for the rest of the run.
    """

    patience: int = 3
    max_rollbacks: int = 3
    lr_factor: float = 0.5

    def __post_init__(self) -> None:
        check_positive_int(self.patience, "patience")
        check_non_negative_int(self.max_rollbacks, "max_rollbacks")
        if not 0.0 < check_finite(self.lr_factor, "lr_factor") <= 1.0:
            raise ValueError(f"lr_factor must be in (0, 1], got {self.lr_factor!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a CUDA device that supports it, else fp32; anything else as given."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for a resolved precision (a no-op for fp32)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The paper's linear scaling rule: ``lr = base_lr * effective_batch / 256`` (Sec. A.1)."""
    if effective_batch <= 0:
        raise ValueError(f"effective_batch must be positive, got {effective_batch!r}")
    return base_lr * effective_batch / 256


def lr_at_step(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then half-cycle cosine.

    Warm-up reaches ``base_lr`` on its last step (``base_lr * (step + 1) / warmup_steps``), so no step is wasted at
    lr 0; then the cosine decays from ``base_lr`` at ``warmup_steps`` towards ``min_lr`` at ``total_steps``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step!r}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """A run's optimisation plan: the peak lr from the effective batch, and the steps of warm-up and in total."""

    lr: float
    min_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    effective_batch: int

    @classmethod
    def plan(cls, *, batches_per_epoch: int, accum_iter: int, batch_size: int, world_size: int, epochs: int,
             warmup_epochs: float, blr: float, lr: float | None, min_lr: float) -> Schedule:
        """``lr`` wins over ``blr``; the last, shorter accumulation group of an epoch still steps."""
        steps_per_epoch = math.ceil(batches_per_epoch / accum_iter)
        effective_batch = batch_size * accum_iter * world_size
        peak = lr if lr is not None else scaled_lr(blr, effective_batch)
        return cls(peak, min(min_lr, peak), steps_per_epoch, epochs * steps_per_epoch,
                   round(warmup_epochs * steps_per_epoch), effective_batch)

    def lr_at(self, step: int) -> float:
        return lr_at_step(step, base_lr=self.lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                          min_lr=self.min_lr)


@dataclass
class Trainer:
    """A model, its optimizer and scaler, and the step counter the epochs advance.

    Args:
        model: the module whose weights train (unwrapped: what checkpoints save).
        optimizer: its optimizer; each param group may carry an ``lr_scale``.
        schedule: the lr plan.
        info: the process group (DDP wraps ``model`` when it has several processes).
        precision: a resolved precision ("fp32", "bf16", "fp16"; fp16 adds a grad scaler).
        accum_iter: micro-batches per optimizer step.
        compile: ``torch.compile`` the (wrapped) model.
        recovery: skip non-finite steps and roll back after too many (None: stop at the first one).
        rollbacks: rollbacks made so far (a resumed run's count).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    info: DistInfo
    precision: str = "fp32"
    accum_iter: int = 1
    compile: bool = False
    step: int = 0
    recovery: Recovery | None = None
    rollbacks: int = 0

    def __post_init__(self) -> None:
        device = self.info.device
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.ddp = (DDP(self.model, device_ids=[device] if device.type == "cuda" else None)
                    if self.info.enabled else None)
        self.forward = self.ddp if self.ddp is not None else self.model  # the model as called
        if self.compile:
            self.forward = torch.compile(self.forward)
        self.skipped_in_a_row = 0  # non-finite steps since the last applied one
        self._good: dict[str, Any] | None = None  # what roll_back restores

    @property
    def lr_factor(self) -> float:
        """What the rollbacks so far multiply the scheduled lr by."""
        return self.recovery.lr_factor ** self.rollbacks if self.recovery is not None else 1.0

    def resume(self, optimizer: dict[str, Any], scaler: dict[str, Any], step: int,
               recovery: dict[str, int] | None = None) -> None:
        """Continue from a checkpoint's optimizer and scaler states, its optimizer step and its ``recovery_state``."""
        self.optimizer.load_state_dict(optimizer)
        self.scaler.load_state_dict(scaler)
        self.step = step
        self.rollbacks = (recovery or {}).get("rollbacks", 0)
        self.skipped_in_a_row = (recovery or {}).get("skipped_in_a_row", 0)

    def recovery_state(self) -> dict[str, int]:
        """What a checkpoint keeps of the recovery, so that a resume continues exactly."""
        return {"rollbacks": self.rollbacks, "skipped_in_a_row": self.skipped_in_a_row}

    def remember_good_state(self) -> None:
        """Keep a copy (in host memory) of the weights, optimizer and scaler states and the step, for ``roll_back``;
        nothing when no rollback can happen (recovery off, or ``max_rollbacks`` 0): the copy is the size of the model
        and its optimizer state."""
        if self.recovery is None or self.recovery.max_rollbacks == 0:
            return
        self._good = {"model": _to_cpu(self.model.state_dict()), "optimizer": _to_cpu(self.optimizer.state_dict()),
                      "scaler": self.scaler.state_dict(), "step": self.step}

    def roll_back(self, reason: str, stop_hint: str = "") -> int:
        """Return to the remembered state with the lr lowered once more; returns the step it restarts from.

        Raises:
            NonFiniteLossError: the run has spent its ``max_rollbacks`` (``reason`` and ``stop_hint`` end the
                message), or nothing was remembered.
        """
        if self.recovery is None or self._good is None or self.rollbacks >= self.recovery.max_rollbacks:
            spent = self.recovery.max_rollbacks if self.recovery is not None else 0
            raise NonFiniteLossError(f"{reason}; stopping after {spent} rollback(s) (--max-rollbacks){stop_hint}. "
                                     "Lower --blr/--lr or use --precision fp32")
        good = self._good
        self.model.load_state_dict(good["model"])
        self.optimizer.load_state_dict(_to_cpu(good["optimizer"]))  # a copy: the optimizer may keep what it loads
        self.scaler.load_state_dict(good["scaler"])
        self.optimizer.zero_grad(set_to_none=True)
        self.step, self.skipped_in_a_row = good["step"], 0
        self.rollbacks += 1
        return self.step

    def _grad_norm(self) -> Tensor:
        """The norm of all gradients, one fused reduction (0 with a grad scaler, which checks them itself)."""
        if self.scaler.is_enabled():
            return torch.zeros((), device=self.info.device)
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.info.device)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())

    def train_epoch(
        self,
        batches: Iterable,
        loss_of: Callable[[nn.Module, Any], Tensor],
        *,
        num_batches: int,
        epoch: int,
        epochs: int,
        progress: bool = False,
        on_step: Callable[[dict[str, float]], None] | None = None,
        on_skip: Callable[[dict[str, Any]], None] | None = None,
        stop_hint: Callable[[], str] = lambda: "",
        should_stop: Callable[[], bool] | None = None,
        so_far: EpochProgress = EpochProgress(),  # noqa: B008 (frozen)
    ) -> float:
        """One pass over ``batches``; returns the mean loss of its optimizer steps.

        Args:
            batches: the epoch's micro-batches; each a tuple whose first element is a batch of images.
            loss_of: ``loss_of(forward, batch)``, the scalar loss of one micro-batch (run under autocast).
            num_batches: ``len(batches)``: it fixes the accumulation groups.
            epoch, epochs: this epoch (0-based) and how many the run has, for the progress bar and messages.
            progress: show a progress bar (on a terminal, on the main process only).
            on_step: called after every optimizer step with ``{"step", "loss", "lr", "img_per_s"}``.
            on_skip: called after every skipped (non-finite) step with ``{"step", "non_finite", "in_a_row"}``.
            stop_hint: the end of the message when the loop stops (e.g. where the last good checkpoint is).
            should_stop: asked at every optimizer step; True on any process stops all of them after that step.
            so_far: the progress of this epoch before ``batches`` (a resumed epoch): its steps count in the mean.

        Raises:
            StopRequested: ``should_stop`` asked; its ``progress`` includes ``so_far``.
            NonFiniteLossError: a non-finite step without ``recovery``.
            Diverged: ``recovery.patience`` non-finite steps in a row.
        """
        from tqdm.auto import tqdm  # an optional package of the train and eval extras

        info, n = self.info, num_batches
        bar = tqdm(total=math.ceil(n / self.accum_iter), desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                   dynamic_ncols=True, disable=None if progress and info.is_main else True)  # None: only on a terminal
        group_loss = torch.zeros((), device=info.device)
        loss_sum, steps, images, t_step = so_far.loss_sum, so_far.steps, 0, time.perf_counter()

        def stop_here(i: int) -> StopRequested:
            bar.close()
            return StopRequested(EpochProgress(so_far.batches + i + 1, steps, loss_sum))

        for i, batch in enumerate(batches):
            first = i - i % self.accum_iter
            group = min(self.accum_iter, n - first)  # micro-batches in this optimizer step
            if i == first:
                lr = self.schedule.lr_at(self.step) * self.lr_factor
                for g in self.optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
            last_micro = i == first + group - 1
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last_micro else contextlib.nullcontext()
            with no_sync:
                with autocast(self.precision, info.device):
                    loss = loss_of(self.forward, batch)
                self.scaler.scale(loss / group).backward()
            group_loss += loss.detach().float()
            images += batch[0].shape[0] * info.world_size
            if not last_micro:
                continue
            # Every process takes the same decisions: the loss and gradient norm summed over the processes, checked
            # before anything is applied, and whether any process was asked to stop after this step.
            stop = torch.full((), float(should_stop is not None and should_stop()), device=info.device)  # no sync
            checked = all_reduce_sum(torch.stack([group_loss / group, self._grad_norm(), stop]), info)
            step_loss, grad_norm, stop_votes = (checked / info.world_size).tolist()
            group_loss.zero_()
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                kind = "loss" if not math.isfinite(step_loss) else "gradient"
                what = f"loss {step_loss}" if kind == "loss" else f"gradient (norm {grad_norm})"
                where = f"optimizer step {self.step + 1} (epoch {epoch + 1}, batch {i + 1} of {n})"
                if self.recovery is None:
                    bar.close()
                    raise NonFiniteLossError(f"non-finite {what} at {where}; stopping without applying it"
                                             f"{stop_hint()}. Lower --blr/--lr or use --precision fp32")
                self.optimizer.zero_grad(set_to_none=True)  # nothing of this step is applied
                self.step += 1
                self.skipped_in_a_row += 1
                t_step, images = time.perf_counter(), 0
                if on_skip is not None:
                    on_skip({"step": self.step, "non_finite": kind, "in_a_row": self.skipped_in_a_row})
                if self.skipped_in_a_row >= self.recovery.patience:
                    bar.close()
                    raise Diverged(f"{self.skipped_in_a_row} non-finite steps in a row, the last a non-finite "
                                   f"{what} at {where}")
                bar.update()
                if stop_votes > 0:
                    raise stop_here(i)
                continue
            self.skipped_in_a_row = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            now = time.perf_counter()
            record = {"step": self.step, "loss": step_loss, "lr": lr, "img_per_s": images / (now - t_step)}
            t_step, images = now, 0
            loss_sum, steps = loss_sum + step_loss, steps + 1
            if on_step is not None:
                on_step(record)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{record['img_per_s']:.1f}")
            bar.update()
            if stop_votes > 0:
                raise stop_here(i)
        bar.close()
        return loss_sum / max(steps, 1)


def _to_cpu(state: Any) -> Any:
    """A copy of a (nested) state dict with every tensor in host memory."""
    if isinstance(state, Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return copy.deepcopy(state)
