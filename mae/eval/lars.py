"""LARS (You et al. 2017) as the MAE linear probe uses it (the authors' optimiser, from MoCo v3).

For every parameter with more than one dimension, the update (gradient + weight decay x weight) is scaled by the
trust ratio eta x ||w|| / ||update|| (1 when either norm is zero), EVEN WHEN the weight decay is 0; then momentum
SGD. Parameters with one dimension (biases, norms) get neither weight decay nor the trust ratio. timm's ``Lars``
skips the ratio at weight decay 0 unless ``always_adapt=True``, and lightly's always does: neither default matches.

    for each p with grad g:
        if p.ndim > 1:
            u = g + weight_decay * p
            u = u * (trust_coefficient * ||p|| / ||u||)   if ||p|| > 0 and ||u|| > 0
        else:
            u = g
        buf = momentum * buf + u          (buf starts at 0)
        p  -= lr * buf
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["LARS"]


class LARS(torch.optim.Optimizer):
    """Momentum SGD with layer-wise trust ratios on every matrix (see the module docstring for the exact step).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (the linear probe sets it every iteration from its schedule).
        weight_decay: L2 factor added to the update of parameters with more than one dimension.
        momentum: heavy-ball momentum.
        trust_coefficient: eta of the trust ratio.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum),
                            ("trust_coefficient", trust_coefficient)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "trust_coefficient": trust_coefficient}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = torch.where(
                        (w_norm > 0) & (u_norm > 0), group["trust_coefficient"] * w_norm / u_norm,
                        torch.ones_like(w_norm),
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss
