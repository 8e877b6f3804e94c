"""What a cluster user reads in each epoch's log line and record: images/s per process and in total, peak memory,
and the model FLOPs utilisation (MFU). (The data-wait share comes from ``data.Batches``.)

FLOPs. One training micro-step (the forward and backward of the loss, as the training loop runs it, ``loss_only``) is
counted once, at the start, by ``torch.utils.flop_counter.FlopCounterMode`` on a copy of the model on the meta device
with the run's batch shape: nothing is allocated and no random state is touched. The counter counts matrix products,
convolutions and attention (2 FLOPs per multiply-add); element-wise work (norms, GELU, softmax, the loss, the
optimizer) is left out, as in the usual definition of MFU. Per process, MFU = step FLOPs x micro-steps of the epoch
/ its seconds / the peak.

Peak. ``--peak-tflops``, else the vendors' datasheet figure for dense BF16 tensor-core work (NVIDIA's H100, H200 and
A100 datasheets; the "with sparsity" figures are twice these) for a GPU ``torch.cuda.get_device_name`` names in
``KNOWN_GPUS``. Otherwise (a CPU, an unknown GPU) MFU is left out, and the start of the run says so once.

Memory. On CUDA ``torch.cuda.max_memory_allocated`` (tensors only; the counter is reset every epoch); on the CPU the
process's maximum resident set size since it started (``resource.getrusage``; data-loader workers are processes of
their own and are not in it). The record states which (``peak_memory_kind``).
"""

from __future__ import annotations

import re
import resource
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import MAEConfig
from ..functional import shuffle_order
from ..model import MaskedAutoEncoder

__all__ = ["KNOWN_GPUS", "Throughput", "known_peak_tflops", "step_flops"]

# (pattern in torch.cuda.get_device_name, dense BF16 TFLOP/s, which datasheet): PCIe and NVL boards are slower.
KNOWN_GPUS = (
    (r"H200(?!.*NVL)", 989.0, "NVIDIA H200 datasheet, dense BF16"),
    (r"H100(?!.*(PCIe|NVL))", 989.0, "NVIDIA H100 SXM datasheet, dense BF16"),
    (r"A100", 312.0, "NVIDIA A100 datasheet, dense BF16"),
)


def known_peak_tflops(device_name: str) -> tuple[float, str] | None:
    """The peak TFLOP/s of a GPU in ``KNOWN_GPUS`` and its source, or None."""
    for pattern, tflops, source in KNOWN_GPUS:
        if re.search(pattern, device_name):
            return tflops, source
    return None


def step_flops(config: MAEConfig, batch_size: int) -> int:
    """FLOPs of one training micro-step (forward + backward of ``loss_only``) on ``batch_size`` images, counted."""
    model = MaskedAutoEncoder.from_config(config, device="meta")
    imgs = torch.zeros(batch_size, config.in_chans, *config.img_size, device="meta")  # (B, C, H, W)
    noise = torch.zeros(batch_size, config.num_patches, device="meta")  # (B, L): values do not change the count
    with FlopCounterMode(display=False) as counter:
        # forward(loss_only=True) without its loss, which is element-wise (uncounted) and is left uncalled here
        latent, _, ids_restore = model.encoder(imgs, noise=noise)  # (B, 1+K, D)
        removed = shuffle_order(ids_restore)[:, latent.shape[1] - 1:]  # (B, L-K): the rows the loss reads
        model.decoder(latent, ids_restore, patches=removed).sum().backward()
    return int(counter.get_total_flops())


def _peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in GB (1e9 bytes) and what it measures."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9, "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9, "process max RSS"


@dataclass
class Throughput:
    """Measures each epoch of one process: call ``epoch`` at its end; ``describe`` gives the log line's part."""

    device: torch.device
    world_size: int
    batch_size: int
    flops_per_step: int  # one micro-step of this process
    peak_tflops: float | None  # of one device; None: no MFU
    peak_source: str

    @classmethod
    def start(cls, config, device: torch.device, world_size: int) -> Throughput:
        """Count the step's FLOPs and find the peak (``config``: a ``TrainConfig``)."""
        flops = step_flops(config.model_config, config.batch_size)
        peak, source = config.peak_tflops, "--peak-tflops"
        if peak is None and device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            known = known_peak_tflops(name)
            peak, source = known if known else (None, f"{name} is not in the table of known GPUs")
        elif peak is None:
            source = f"no --peak-tflops for this {device.type} run"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return cls(device, world_size, config.batch_size, flops, peak, source)

    def describe_start(self) -> str:
        """The line said once at the start: the step's FLOPs and the peak MFU is measured against."""
        per_image = self.flops_per_step / self.batch_size / 1e9
        if self.peak_tflops is None:
            mfu = f"MFU not reported ({self.peak_source}; pass --peak-tflops)"
        else:
            mfu = f"MFU against {self.peak_tflops:g} TFLOP/s per device ({self.peak_source})"
        return f"one training step: {per_image:.3g} GFLOP per image (torch.utils.flop_counter); {mfu}"

    def epoch(self, micro_steps: int, seconds: float) -> dict[str, Any]:
        """The epoch record's throughput fields for ``micro_steps`` batches of this process in ``seconds``."""
        images = micro_steps * self.batch_size
        memory, kind = _peak_memory(self.device)
        tflops = self.flops_per_step * micro_steps / seconds / 1e12
        record = {"img_per_s": images * self.world_size / seconds, "img_per_s_per_process": images / seconds,
                  "peak_memory_gb": memory, "peak_memory_kind": kind, "tflops_per_process": tflops,
                  "gflops_per_image": self.flops_per_step / self.batch_size / 1e9}
        if self.peak_tflops is not None:
            record["mfu"] = tflops / self.peak_tflops
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return record

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        """The throughput part of the epoch line."""
        text = (f"{record['img_per_s']:.1f} img/s ({record['img_per_s_per_process']:.1f} per process)  "
                f"peak mem {record['peak_memory_gb']:.2f} GB ({record['peak_memory_kind']})")
        return text + (f"  MFU {record['mfu']:.1%}" if "mfu" in record else "")
