"""Run configurations of the three protocols: one frozen dataclass each, sharing the common fields.

Every field maps to one command-line flag (``batch_size`` -> ``--batch-size``). Fields left at None are resolved when
the run starts (``resolve``): the paper's recipe (DESIGN.md section 5) on ``--data``, a CPU-sized run on the built-in
digits, and the model-size dependent values (blr, layer decay, drop path for B vs L/H) from the encoder's width.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["EvalConfig", "FinetuneConfig", "KNNConfig", "LinProbeConfig", "RESUMABLE_FIELDS"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What may differ when a run is resumed: fields that change neither the model, the data nor the optimisation.
RESUMABLE_FIELDS = frozenset({"num_workers", "device", "progress", "output_dir", "name"})


@dataclass(frozen=True)
class EvalConfig:
    """Fields every protocol has."""

    checkpoint: str | None = None  # pretrained encoder: anything from_pretrained reads
    model: str | None = None  # preset at random init (the from-scratch baseline), instead of checkpoint
    data: str | None = None  # folder with train/<class>/ and val/<class>/; None: scikit-learn's digits
    img_size: int | None = None  # default: the checkpoint's; for --model 224 (32 on the digits)
    patch_size: int | None = None  # --model only; default the preset's (8 on the digits)
    epochs: int | None = None  # protocol and data dependent
    batch_size: int | None = None  # per process
    blr: float | None = None  # base lr: lr = blr * effective batch / 256
    lr: float | None = None  # absolute lr, overrides blr
    num_workers: int | None = None  # data-loader processes (default 0 on the digits, min(8, cores) on --data)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    precision: str = "auto"  # auto (bf16 on CUDA when supported, else fp32) | fp32 | bf16 | fp16
    seed: int = 0
    crop_pct: float = 0.875  # evaluation: Resize(img_size / crop_pct) + CenterCrop(img_size), paper 224/256
    output_dir: str = "runs"
    name: str | None = None  # run folder under output_dir (default <protocol>-<data>-<encoder>)
    progress: bool = True  # progress bar (on a terminal) and one line per epoch; off: only the summary line

    protocol: ClassVar[str] = "eval"
    # None fields are filled from these: the paper's values on --data, CPU-sized ones on the built-in digits.
    PAPER: ClassVar[dict[str, Any]] = {}
    DIGITS: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.model is not None:
            raise ValueError(f"give --checkpoint or --model, not both (got {self.checkpoint!r} and {self.model!r})")
        for name in ("img_size", "patch_size", "epochs", "batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("num_workers", "seed"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name in ("blr", "lr"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive, got {v!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")

    def resolve(self, embed_dim: int) -> EvalConfig:
        """A copy with every None field that has a default filled in (``embed_dim``: the encoder's width)."""
        defaults = dict(self.DIGITS if self.data is None else self.PAPER)
        defaults.update({k: v for k, v in self.size_defaults(embed_dim).items() if v is not None})
        defaults["num_workers"] = 0 if self.data is None else min(8, os.cpu_count() or 1)
        if "warmup_epochs" in defaults and self.epochs is not None and self.warmup_epochs is None:
            # A shorter run than the recipe's keeps the recipe's warm-up fraction once the warm-up would not fit.
            defaults["warmup_epochs"] = min(defaults["warmup_epochs"],
                                            self.epochs * defaults["warmup_epochs"] / defaults["epochs"])
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def size_defaults(self, embed_dim: int) -> dict[str, Any]:
        return {}

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        data = "digits" if self.data is None else _slug(self.data)
        encoder = self.model or (_slug(self.checkpoint) if self.checkpoint else "model")
        return f"{self.protocol}-{data}-{encoder}"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in valid})

    def replace(self, **changes: Any) -> EvalConfig:
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise TypeError(f"unknown {type(self).__name__} field(s) {unknown}; valid fields: {valid}")
        return dataclasses.replace(self, **changes)


def _slug(text: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text).rstrip("/\\").split("/")[-1])
    return base.strip("._") or "x"


def _large(embed_dim: int) -> bool:
    """ViT-L and ViT-H (width 1024 and 1280) take the L/H values of the recipes; everything narrower B's."""
    return embed_dim >= 1024


@dataclass(frozen=True)
class KNNConfig(EvalConfig):
    """Weighted k-NN on frozen, L2-normalised features (DINO's protocol). No training: ``epochs`` is unused."""

    k: int = 20  # neighbours
    temperature: float = 0.07  # votes exp(sim / T)
    pool: str = "cls"  # cls token after the norm, or mean of the patch tokens

    protocol = "knn"
    PAPER = {"batch_size": 128}
    DIGITS = {"batch_size": 256}

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
            raise ValueError(f"k must be a positive int, got {self.k!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")


@dataclass(frozen=True)
class _Trained(EvalConfig):
    warmup_epochs: float | None = None  # per-iteration linear warm-up, then half-cycle cosine
    min_lr: float | None = None  # end of the cosine
    weight_decay: float | None = None
    accum_iter: int = 1  # micro-batches per optimizer step (effective batch = batch * accum * processes)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.accum_iter, bool) or not isinstance(self.accum_iter, int) or self.accum_iter <= 0:
            raise ValueError(f"accum_iter must be a positive int, got {self.accum_iter!r}")
        for name in ("warmup_epochs", "min_lr", "weight_decay"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if self.warmup_epochs is not None and self.epochs is not None and self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")


@dataclass(frozen=True)
class LinProbeConfig(_Trained):
    """Linear probe (paper Sec. A.2): frozen encoder, cls token, BatchNorm1d (no affine) + Linear, LARS."""

    cache_features: bool = False  # extract the features once, without augmentation, and train on them (fast)

    protocol = "linprobe"
    # Paper: 90 epochs, 10 warm-up, blr 0.1, batch 16384 (512 x 32 GPUs), cosine to 0, no weight decay.
    PAPER = {"epochs": 90, "warmup_epochs": 10.0, "blr": 0.1, "batch_size": 512, "min_lr": 0.0, "weight_decay": 0.0}
    # The digits give 11 steps per epoch at batch 128 (ImageNet at 16384: 78). LARS' trust ratio (0.001 x ||w|| /
    # ||g||) makes each step move the head by a fixed fraction lr x 0.001 of its norm, so 990 steps at the paper's
    # lr (0.05 here) hardly move it: measured on the digits, random-init mae_vit_test, cached features, 90 epochs:
    # blr 0.1 -> 16% top-1, 1 -> 62%, 4 -> 83%, 16 -> 89%, 64 -> 90%. The digits default is 16.
    DIGITS = {"epochs": 90, "warmup_epochs": 10.0, "blr": 16.0, "batch_size": 128, "min_lr": 0.0,
              "weight_decay": 0.0}


@dataclass(frozen=True)
class FinetuneConfig(_Trained):
    """End-to-end fine-tuning (paper Sec. A.1 / authors' recipe) of the encoder as a timm VisionTransformer."""

    layer_decay: float | None = None  # 0.65 (B and smaller) / 0.75 (L, H); 1.0 (none) from random init
    drop_path: float | None = None  # 0.1 (B and smaller) / 0.2 (L) / 0.3 (H)
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    reprob: float = 0.25  # random erasing probability
    auto_augment: str = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec; "none" to switch off

    protocol = "finetune"
    PAPER = {"epochs": 100, "warmup_epochs": 5.0, "batch_size": 64, "min_lr": 1e-6, "weight_decay": 0.05}
    DIGITS = {"epochs": 30, "warmup_epochs": 5.0, "batch_size": 64, "min_lr": 1e-6, "weight_decay": 0.05}

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("mixup", "cutmix", "smoothing"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("mixup_switch_prob", "reprob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if self.drop_path is not None and not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if self.batch_size is not None and self.batch_size % 2 and (self.mixup > 0 or self.cutmix > 0):
            raise ValueError(f"batch_size must be even with mixup/cutmix (pairs are mixed), got {self.batch_size}")

    def size_defaults(self, embed_dim: int) -> dict[str, Any]:
        large = _large(embed_dim)
        return {
            "blr": 1e-3 if large else 5e-4,
            "layer_decay": 1.0 if self.model is not None else (0.75 if large else 0.65),
            "drop_path": 0.3 if embed_dim >= 1280 else (0.2 if large else 0.1),
            "epochs": 50 if large and self.data is not None else None,
        }
