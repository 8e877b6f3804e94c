"""The run configuration: one frozen dataclass. Its defaults ARE the default run (``mae-pretrain`` with no argument).

Every field maps to one ``mae-pretrain`` flag (``batch_size`` -> ``--batch-size``). The resolved values that depend on
the machine (learning rate, effective batch, device, precision) are computed by the engine and saved next to it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ..config import MAEConfig, list_models

__all__ = ["DEMO_DEFAULTS", "PAPER_DEFAULTS", "RESUMABLE_FIELDS", "TrainConfig"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# What may differ when a run is resumed: fields that change neither the model, the data nor the optimisation.
RESUMABLE_FIELDS = frozenset({
    "epochs", "stop_after_epoch", "num_workers", "device", "compile", "threads", "save_every", "keep_every",
    "log_every", "progress", "figures", "tensorboard",
})


# Fields left at None take their value from the data source: a CPU-sized demo on the built-in photographs, the
# paper's recipe (Sec. 4 / A.1; ImageNet, 224 px, the preset's patch) on --data. The demo raises blr because it makes
# 240 steps at batch 32 rather than 800 epochs at batch 4096: lr = 1.6e-2 * 32 / 256 = 2e-3.
DEMO_DEFAULTS: dict[str, Any] = {"img_size": 64, "patch_size": 8, "repeat": 32, "batch_size": 32, "epochs": 20,
                                 "warmup_epochs": 1.0, "blr": 1.6e-2, "keep_every": 10}
PAPER_DEFAULTS: dict[str, Any] = {"img_size": 224, "patch_size": None, "repeat": 1, "batch_size": 64, "epochs": 800,
                                  "warmup_epochs": 40.0, "blr": 1.5e-4, "keep_every": 20}


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining run. With no argument: a ViT-Tiny MAE on 64 px crops of scikit-image's photographs, CPU minutes.

    ``None`` fields are filled from ``DEMO_DEFAULTS`` (built-in photographs) or ``PAPER_DEFAULTS`` (``data`` set) when
    the config is built, so a config always holds concrete values.
    """

    # model
    model: str = "mae_vit_tiny_patch16"  # preset name (see mae.list_models())
    img_size: int | None = None  # square crop size (demo 64, paper 224)
    patch_size: int | None = None  # demo 8 (an 8x8 grid at 64 px); with --data the preset's
    mask_ratio: float = 0.75  # Sec. 4: 75% works best
    norm_pix_loss: bool = False  # Sec. 3: per-patch normalised targets give better features (paper: on)
    model_overrides: dict[str, Any] | None = None  # other MAEConfig fields, e.g. {"depth": 6} for an ablation
    # data
    data: str | None = None  # image folder (flat or class subfolders) or tar shards; None: scikit-image's photographs
    repeat: int | None = None  # images per epoch = repeat * dataset size (demo 32, --data 1)
    num_workers: int = 2  # data-loader processes per training process
    # optimisation
    batch_size: int | None = None  # per process, per micro-step (demo 32, paper 64 on each of 8 GPUs x accum 8)
    accum_iter: int = 1  # micro-steps per optimizer step (effective batch = batch * accum * world size)
    epochs: int | None = None  # demo 20, paper 800
    warmup_epochs: float | None = None  # demo 1, paper 40
    blr: float | None = None  # base lr, scaled by effective_batch / 256 (demo 1.6e-2, paper 1.5e-4)
    lr: float | None = None  # absolute lr; overrides blr when set
    min_lr: float = 0.0  # floor of the cosine
    weight_decay: float = 0.05
    # execution
    precision: str = "auto"  # auto (bf16 on CUDA when supported, else fp32) | fp32 | bf16 | fp16 (grad scaler)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the model
    # torch's CPU threads in each process during the run; None leaves torch's setting (one per core, or
    # OMP_NUM_THREADS). On a machine shared with other jobs, 1 avoids threads waiting on each other (README: measured)
    threads: int | None = None
    seed: int = 0
    # output
    output_dir: str = "runs"
    name: str | None = None  # run folder under output_dir; None: "default" for the photos, else <data>-<model>
    save_every: int = 1  # epochs between updates of checkpoints/last (always updated at the end)
    keep_every: int | None = None  # epochs between kept copies checkpoints/epoch_XXXX (0: none; demo 10, paper 20)
    stop_after_epoch: int | None = None  # leave cleanly after this epoch, e.g. before a job's time limit
    log_every: int = 1  # optimizer steps between metric records
    progress: bool = True  # tqdm bar per epoch (on a terminal)
    figures: bool = True  # write loss.png and reconstructions.png when the run ends
    tensorboard: bool = False  # also log to runs/<name>/tensorboard (needs the tensorboard extra)
    overwrite: bool = False  # replace a previous run in the same folder (it is deleted)

    def __post_init__(self) -> None:
        if self.model not in list_models():
            raise ValueError(f"unknown model preset {self.model!r}; valid presets: {', '.join(list_models())}")
        if self.data is not None and not str(self.data).strip():
            raise ValueError("data must be a folder path or None (the built-in photographs), got an empty string")
        defaults = PAPER_DEFAULTS if self.data is not None else DEMO_DEFAULTS
        for name, value in defaults.items():
            if getattr(self, name) is None:
                if name == "patch_size" and value is None:
                    value = MAEConfig.from_name(self.model).patch_size[0]
                object.__setattr__(self, name, value)
        for name in ("img_size", "patch_size", "repeat", "batch_size", "accum_iter", "epochs", "save_every",
                     "log_every"):
            _positive_int(name, getattr(self, name))
        for name in ("stop_after_epoch", "threads"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("num_workers", "keep_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.model_overrides is not None:
            if not isinstance(self.model_overrides, dict):
                raise TypeError(f"model_overrides must be a dict of MAEConfig fields, got {self.model_overrides!r}")
            own_flags = sorted(set(self.model_overrides) & {"img_size", "patch_size", "mask_ratio", "norm_pix_loss"})
            if own_flags:
                raise ValueError(f"model_overrides must not set {own_flags}: they have their own settings")
            if self.model_overrides.get("in_chans", 3) != 3:
                raise ValueError(f"model_overrides in_chans must be 3 (images are loaded as RGB), "
                                 f"got {self.model_overrides['in_chans']!r}")
        patch = self.patch_size
        if self.img_size % patch:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size {patch}; pick an img_size that is a "
                f"multiple of {patch} (e.g. {max(patch, self.img_size // patch * patch)})"
            )
        self.model_config  # noqa: B018 (builds the MAEConfig: unknown or invalid overrides raise here, with names)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        for name in ("blr", "min_lr", "weight_decay", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}); pass --warmup-epochs "
                "(the paper warms up for 40 of 800 epochs)"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    @property
    def model_config(self) -> MAEConfig:
        """The model this run trains."""
        overrides = {"img_size": self.img_size, "patch_size": self.patch_size, "mask_ratio": self.mask_ratio,
                     "norm_pix_loss": self.norm_pix_loss}
        return MAEConfig.from_name(self.model, **(self.model_overrides or {}), **overrides)

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        if self.data is None:
            return "default"
        return f"{_slug(self.data)}-{self.model}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {unknown}; valid fields: {valid}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in valid})


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _slug(path: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(path).rstrip("/\\").split("/")[-1].split("\\")[-1])
    return base.strip("._") or "data"
