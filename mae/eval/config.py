"""Run configurations of the three protocols: one frozen dataclass each, sharing the common fields.

Every field is one command-line flag (``mae.runtime.cli``: ``batch_size`` -> ``--batch-size``, help in the field).
Fields left at None are resolved when the run starts (``resolve``), by one rule: the paper's recipe (the authors'
settings, docs/evaluation.md) when ``--data`` holds at least ``SMALL_DATA_IMAGES`` training images, else the protocol's
small-data recipe (the built-in digits always): the paper's recipes are built for a million images and thousands of
steps, and on a few thousand images they stay near chance (docs/evaluation.md has the measurements). The values that
depend on the model size (blr, layer decay, drop path for B vs L/H) come from the encoder's width.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

from .._checks import check_bool, check_finite, check_non_negative_int, check_positive_int, check_str
from ..config import list_models
from ..runtime.cli import CommandConfig, absolute_paths, slug
from ..runtime.cli import option as _opt
from ..runtime.distributed import check_device_name
from ..runtime.loop import PRECISIONS
from ..runtime.run_folder import check_run_name
from .features import POOLS

__all__ = ["EvalConfig", "FinetuneConfig", "KNNConfig", "LinProbeConfig", "RESUMABLE_FIELDS",
           "SMALL_DATA_IMAGES"]

# What may differ when a run is resumed: fields that change neither the model, the data nor the optimisation.
RESUMABLE_FIELDS = frozenset({"num_workers", "device", "progress", "output_dir", "name"})
SMALL_DATA_IMAGES = 10_000  # fewer training images than this: the small-data recipe


def _check_optional(config: Any, names: tuple[str, ...], check: Any, **bounds: Any) -> None:
    for name in names:
        if getattr(config, name) is not None:
            check(getattr(config, name), name, **bounds)


@dataclass(frozen=True)
class EvalConfig(CommandConfig):
    """Fields every protocol has."""

    checkpoint: str | None = _opt(None, "pretrained encoder: an official release file, a Hugging Face ViTMAE folder, a "
                                        "saved model folder or a mae-pretrain checkpoint")
    model: str | None = _opt(None, "a preset at random initialisation, the from-scratch baseline: "
                                   + ", ".join(list_models()))
    data: str | None = _opt(None, "folder with train/<class>/<image> and val/<class>/<image>; default: "
                                  "scikit-learn's digits (offline)")
    img_size: int | None = _opt(None, "input size (default: the checkpoint's; for --model 224, or 32 on the digits)")
    patch_size: int | None = _opt(None, "patch size, with --model only (default: the preset's, or 8 on the digits)")
    batch_size: int | None = _opt(None, "images per process per step")
    num_workers: int | None = _opt(None, "data-loader processes (default 0 on the digits, min(8, CPU cores) with "
                                         "--data)")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N (under torchrun each process takes cuda:LOCAL_RANK)")
    precision: str = _opt("auto", "auto (bf16 on CUDA when supported, else fp32), fp32, bf16, or fp16 with a grad "
                                  "scaler", choices=PRECISIONS)
    seed: int = _opt(0, "random seed (data order, augmentation, new layers; the initial weights with --model)")
    crop_pct: float = _opt(0.875, "evaluation: resize to img_size / crop_pct, then centre-crop img_size (paper "
                                  "224/256)")
    output_dir: str = _opt("runs", "folder holding run folders")
    name: str | None = _opt(None, "run folder name (default <protocol>-<data>-<encoder>)")
    progress: bool = _opt(True, "show a progress bar (on a terminal) and a line per epoch")

    protocol: ClassVar[str] = "eval"
    # None fields are filled from these: the paper's values, or the small-data recipe (``recipe``).
    PAPER: ClassVar[dict[str, Any]] = {}
    SMALL: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.model is not None:
            raise ValueError(f"give --checkpoint or --model, not both (got {self.checkpoint!r} and {self.model!r})")
        _check_optional(self, ("checkpoint", "model", "data", "name"), check_str)
        for name in ("checkpoint", "data"):
            object.__setattr__(self, name, absolute_paths(getattr(self, name)))
        _check_optional(self, ("img_size", "patch_size", "batch_size"), check_positive_int)
        _check_optional(self, ("num_workers",), check_non_negative_int)
        check_non_negative_int(self.seed, "seed")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_device_name(self.device)
        check_run_name(self.name)
        if check_finite(self.crop_pct, "crop_pct") <= 0.0 or self.crop_pct > 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        check_bool(self.progress, "progress")

    def recipe(self, num_train: int) -> str:
        """"paper" with ``--data`` of at least ``SMALL_DATA_IMAGES`` training images, else "small-data"."""
        return "paper" if self.data is not None and num_train >= SMALL_DATA_IMAGES else "small-data"

    def resolve(self, embed_dim: int, num_train: int) -> EvalConfig:
        """A copy with every None field that has a default filled in, from ``recipe(num_train)`` and the encoder's
        width ``embed_dim`` (the small-data recipe's values win over the size-dependent ones)."""
        defaults = self.defaults(embed_dim, num_train)
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def defaults(self, embed_dim: int, num_train: int) -> dict[str, Any]:
        """The values ``resolve`` fills None fields with."""
        sized = {k: v for k, v in self.size_defaults(embed_dim).items() if v is not None}
        small = self.recipe(num_train) == "small-data"
        defaults = {**sized, **self.SMALL} if small else {**self.PAPER, **sized}
        defaults["num_workers"] = 0 if self.data is None else min(8, os.cpu_count() or 1)
        return defaults

    def size_defaults(self, embed_dim: int) -> dict[str, Any]:
        return {}

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        data = "digits" if self.data is None else slug(self.data, "data")
        encoder = self.model or (_checkpoint_label(self.checkpoint) if self.checkpoint else "model")
        return f"{self.protocol}-{data}-{encoder}"

    @classmethod
    def default_text(cls, field: dataclasses.Field) -> str:
        """Defaults that depend on the data say both values."""
        if field.name in cls.SMALL or field.name in cls.PAPER:
            return (f"{cls.PAPER.get(field.name, 'by model size')} with --data of {SMALL_DATA_IMAGES:,}+ images, "
                    f"{cls.SMALL.get(field.name, 'by model size')} on smaller data and the digits")
        return str(field.default)


def _checkpoint_label(path: str) -> str:
    """A checkpoint's name in default run names: a mae-pretrain checkpoint (``runs/<run>/checkpoints/last``) is
    ``<run>-last``, so the checkpoints of different runs get different evaluation folders; anything else its name."""
    parts = os.path.normpath(os.path.abspath(os.path.expanduser(path))).split(os.sep)
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return slug(f"{parts[-3]}-{parts[-1]}", "model")
    return slug(path, "model")


def _check_auto_augment(spec: str) -> None:
    """An augmentation policy timm knows ('none' switches it off): built once here, so a typo fails before the run."""
    if spec.lower() == "none":
        return
    build = (rand_augment_transform if spec.startswith("rand") else
             augment_and_mix_transform if spec.startswith("augmix") else auto_augment_transform)
    try:
        build(spec, {})
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        raise ValueError(f"auto_augment {spec!r} is not a timm augmentation policy ({err or 'malformed'}); expected "
                         "e.g. 'rand-m9-mstd0.5-inc1' (the paper's), 'augmix-m5', 'original' or 'none'") from None


def _large(embed_dim: int) -> bool:
    """ViT-L and ViT-H (width 1024 and 1280) take the L/H values of the recipes; everything narrower B's."""
    return embed_dim >= 1024


@dataclass(frozen=True)
class KNNConfig(EvalConfig):
    """Weighted k-NN on frozen, L2-normalised features (DINO's protocol). Nothing is trained, so it has no epochs or
    learning rate."""

    k: int = _opt(20, "neighbours that vote")
    temperature: float = _opt(0.07, "votes are exp(cosine similarity / temperature)")
    pool: str = _opt("cls", "feature: cls (token after the final norm) or mean (of the patch tokens)", choices=POOLS)

    protocol = "knn"
    PAPER = {"batch_size": 128}
    SMALL = {"batch_size": 256}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self.k, "k")
        if check_finite(self.temperature, "temperature") <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")


@dataclass(frozen=True)
class _Trained(EvalConfig):
    """Fields of the protocols that train (the one loop of ``mae.runtime.loop``)."""

    epochs: int | None = _opt(None, "epochs to train")
    blr: float | None = _opt(None, "base learning rate: lr = blr x effective batch / 256")
    lr: float | None = _opt(None, "absolute learning rate (overrides --blr)")
    warmup_epochs: float | None = _opt(None, "epochs of per-iteration linear warm-up before the cosine")
    min_lr: float | None = _opt(None, "learning rate at the end of the cosine")
    weight_decay: float | None = _opt(None, "weight decay (LARS: matrices only; AdamW: not on 1-D parameters, "
                                            "pos_embed, cls_token)")
    accum_iter: int = _opt(1, "micro-batches per optimizer step (effective batch = batch x accum x processes)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self.accum_iter, "accum_iter")
        _check_optional(self, ("epochs",), check_positive_int)
        for name in ("blr", "lr"):
            if getattr(self, name) is not None and check_finite(getattr(self, name), name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        _check_optional(self, ("warmup_epochs", "min_lr", "weight_decay"), check_finite, low=0.0)
        if self.warmup_epochs is not None and self.epochs is not None and self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")

    def defaults(self, embed_dim: int, num_train: int) -> dict[str, Any]:
        defaults = super().defaults(embed_dim, num_train)
        if self.epochs is not None and self.warmup_epochs is None:
            # A shorter run than the recipe's keeps the recipe's warm-up fraction once the warm-up would not fit.
            defaults["warmup_epochs"] = min(defaults["warmup_epochs"],
                                            self.epochs * defaults["warmup_epochs"] / defaults["epochs"])
        return defaults


@dataclass(frozen=True)
class LinProbeConfig(_Trained):
    """Linear probe (paper Sec. A.2): frozen encoder, cls token, BatchNorm1d (no affine) + Linear, LARS."""

    cache_features: bool | None = _opt(None, "extract the features once without augmentation and train the head on "
                                              "them (fast)")

    protocol = "linprobe"
    # Paper: 90 epochs, 10 warm-up, blr 0.1, batch 16384 (512 x 32 GPUs), cosine to 0, no weight decay.
    PAPER = {"epochs": 90, "warmup_epochs": 10.0, "blr": 0.1, "batch_size": 512, "min_lr": 0.0, "weight_decay": 0.0,
             "cache_features": False}
    # The digits give 11 steps per epoch at batch 128 (ImageNet at 16384: 78). LARS' trust ratio moves the head by a
    # fixed fraction lr x 0.001 of its norm per step, so 990 steps at the paper's lr hardly move it: small data takes
    # blr 16 on cached features (docs/evaluation.md: the blr sweep behind it).
    SMALL = {"epochs": 90, "warmup_epochs": 10.0, "blr": 16.0, "batch_size": 128, "min_lr": 0.0,
             "weight_decay": 0.0, "cache_features": True}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_optional(self, ("cache_features",), check_bool)


@dataclass(frozen=True)
class FinetuneConfig(_Trained):
    """End-to-end fine-tuning (paper Sec. A.1 / authors' recipe) of the encoder as a timm VisionTransformer."""

    layer_decay: float | None = _opt(None, "layer-wise lr decay (default 0.65 for B and smaller, 0.75 for L/H, 1.0 "
                                           "with --model)")
    drop_path: float | None = _opt(None, "stochastic depth rate (default 0.1 B, 0.2 L, 0.3 H)")
    mixup: float | None = _opt(None, "mixup alpha (0: off)")
    cutmix: float | None = _opt(None, "cutmix alpha (0: off)")
    mixup_switch_prob: float = _opt(0.5, "probability of cutmix instead of mixup for a batch")
    smoothing: float = _opt(0.1, "label smoothing")
    reprob: float | None = _opt(None, "random erasing probability")
    auto_augment: str | None = _opt(None, "timm RandAugment spec, or 'none'")

    protocol = "finetune"
    PAPER = {"epochs": 100, "warmup_epochs": 5.0, "batch_size": 64, "min_lr": 1e-6, "weight_decay": 0.05,
             "mixup": 0.8, "cutmix": 1.0, "reprob": 0.25, "auto_augment": "rand-m9-mstd0.5-inc1"}
    # The paper's regularisation (mixup, cutmix, RandAugment, erasing) needs hundreds of epochs: within a CPU budget
    # it keeps small data near chance, so small data trains without it, at a higher lr (docs/evaluation.md).
    SMALL = {"epochs": 10, "warmup_epochs": 2.0, "batch_size": 64, "min_lr": 1e-6, "weight_decay": 0.05,
             "blr": 4e-3, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "auto_augment": "none"}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_optional(self, ("mixup", "cutmix"), check_finite, low=0.0)
        _check_optional(self, ("reprob",), check_finite, low=0.0, high=1.0)
        check_finite(self.mixup_switch_prob, "mixup_switch_prob", low=0.0, high=1.0)
        if check_finite(self.smoothing, "smoothing", low=0.0) >= 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")
        if self.layer_decay is not None and (check_finite(self.layer_decay, "layer_decay") <= 0.0
                                             or self.layer_decay > 1.0):
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if self.drop_path is not None and check_finite(self.drop_path, "drop_path", low=0.0) >= 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if self.batch_size is not None and self.batch_size % 2 and (self.mixup or self.cutmix):
            raise ValueError(f"batch_size must be even with mixup/cutmix (pairs are mixed), got {self.batch_size}")
        if self.auto_augment is not None:
            _check_auto_augment(check_str(self.auto_augment, "auto_augment"))

    def size_defaults(self, embed_dim: int) -> dict[str, Any]:
        large = _large(embed_dim)
        return {
            "blr": 1e-3 if large else 5e-4,
            "layer_decay": 1.0 if self.model is not None else (0.75 if large else 0.65),
            "drop_path": 0.3 if embed_dim >= 1280 else (0.2 if large else 0.1),
            "epochs": 50 if large and self.data is not None else None,
        }
