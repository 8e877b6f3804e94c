"""The learning-rate schedule: linear warm-up then half-cycle cosine, as a pure function of the optimizer step.

Being a pure function of the step (no scheduler object with hidden state) makes resuming exact by construction:
the step number saved in a checkpoint is all the schedule needs.
"""

from __future__ import annotations

import math

__all__ = ["lr_at_step", "scaled_lr"]


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The paper's linear scaling rule: ``lr = base_lr * effective_batch / 256`` (Sec. A.1)."""
    if effective_batch <= 0:
        raise ValueError(f"effective_batch must be positive, got {effective_batch!r}")
    return base_lr * effective_batch / 256


def lr_at_step(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Warm-up rises linearly per iteration and reaches ``base_lr`` on the last warm-up step
    (``base_lr * (step + 1) / warmup_steps``), so no step is wasted at lr 0. After it, a half-cycle cosine decays
    from ``base_lr`` at step ``warmup_steps`` towards ``min_lr`` at step ``total_steps``.

    Args:
        step: optimizer steps taken so far (micro-batches of gradient accumulation do not count).
        base_lr: peak learning rate (already scaled by the effective batch).
        total_steps: optimizer steps in the whole run.
        warmup_steps: steps of linear warm-up, at most ``total_steps``.
        min_lr: floor of the cosine.
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
