"""The pretraining run: one frozen dataclass whose defaults ARE the default run (``mae-pretrain`` with no argument).

Every field is one ``mae-pretrain`` flag (``mae.runtime.cli``). The values that depend on the machine (learning rate,
effective batch, device, precision) are resolved by the engine and saved next to the config in the run folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .._checks import check_bool, check_finite, check_non_negative_int, check_positive_int
from ..config import MASKINGS, MAEConfig, list_models
from ..runtime.cli import CommandConfig, absolute_paths, require_extra, slug
from ..runtime.cli import option as _opt
from ..runtime.distributed import check_device_name
from ..runtime.loop import PRECISIONS, Recovery
from ..runtime.run_folder import check_run_name
from .data.loader import DECODE_DEVICES

__all__ = ["DEMO_DEFAULTS", "DEMO_MODEL", "EVAL_POOLS", "INIT_DECODERS", "PAPER_DEFAULTS", "PAPER_MODEL",
           "RESUMABLE_FIELDS", "TRAIN_EXTRA", "TrainConfig", "require_train_extra", "source_defaults"]

# The ``train`` extra (import name -> distribution): mae.train imports them where it uses them, so that
# ``mae-pretrain`` can say what to install in one line.
TRAIN_EXTRA = {"tqdm": "tqdm", "matplotlib": "matplotlib", "skimage": "scikit-image", "PIL": "pillow",
               "torchvision": "torchvision"}


def require_train_extra(what: str) -> None:
    """Raise ``MissingExtraError`` (an ImportError) naming the train extra when one of its packages is missing."""
    require_extra("train", TRAIN_EXTRA, what)


# What may differ when a run is resumed: fields that change neither the model, the data nor the optimisation.
RESUMABLE_FIELDS = frozenset({
    "epochs", "stop_after_epoch", "num_workers", "device", "compile", "threads", "save_every", "keep_every",
    "log_every", "progress", "figures", "tensorboard", "nan_patience", "max_rollbacks", "eval_every", "eval_data",
    "eval_images", "eval_pool", "keep_best", "peak_tflops",
})
# --init-decoder: the decoder of the --init checkpoint, or a freshly initialised one (mae.train.continued)
INIT_DECODERS = ("checkpoint", "fresh")
# The online kNN's features: mae.eval.features.POOLS, spelt out because the eval extra is optional for pretraining.
EVAL_POOLS = ("mean", "cls")

# Fields left at None take their value from the data source: the paper's recipe (Sec. 4 / A.1; 224 px, the preset's
# patch) with --data, a demo that must visibly learn in CPU minutes on the built-in photographs: the small
# "mae_vit_demo_patch4" preset on a 16 x 16 grid of 4 px patches, normalised-pixel targets (Sec. 3), 2 epochs of 48
# steps at batch 32. It raises blr because it makes 96 steps rather than 800 epochs at batch 4096. docs/pretraining.md
# gives its measured held-out score.
DEMO_MODEL, PAPER_MODEL = "mae_vit_demo_patch4", "mae_vit_tiny_patch16"
DEMO_DEFAULTS: dict[str, Any] = {"model": DEMO_MODEL, "img_size": 64, "patch_size": 4, "norm_pix_loss": True,
                                 "repeat": 128, "batch_size": 32, "epochs": 2, "warmup_epochs": 1.0, "blr": 1.6e-2,
                                 "keep_every": 1}
PAPER_DEFAULTS: dict[str, Any] = {"model": PAPER_MODEL, "img_size": 224, "patch_size": None, "norm_pix_loss": False,
                                  "repeat": 1, "batch_size": 64, "epochs": 800, "warmup_epochs": 40.0, "blr": 1.5e-4,
                                  "keep_every": 20}


def source_defaults(data: str | None, model: str | None) -> dict[str, Any]:
    """The one place where the demo and the paper defaults are chosen: the values for ``None`` fields.

    Args:
        data: the run's image folder, None for the built-in photographs (the demo).
        model: the preset name, None for the source's own (``DEMO_MODEL`` or ``PAPER_MODEL``); with ``data`` the
            patch size is that preset's (the paper's).
    """
    if data is None:
        return dict(DEMO_DEFAULTS)
    preset = PAPER_MODEL if model is None else model
    return {**PAPER_DEFAULTS, "patch_size": MAEConfig.from_name(preset).patch_size[0]}


@dataclass(frozen=True)
class TrainConfig(CommandConfig):
    """Pretraining run. With no argument: a small MAE on 64 px crops of scikit-image's photographs, CPU minutes.

    ``None`` fields are filled by ``source_defaults`` (demo on the built-in photographs, the paper's recipe when
    ``data`` is set) when the config is built, so a config always holds concrete values.
    """

    # model
    model: str | None = _opt(None, "model preset: " + ", ".join(list_models()))
    img_size: int | None = _opt(None, "square crop size in pixels")
    patch_size: int | None = _opt(None, "patch size (with --data: the preset's)")
    mask_ratio: float = _opt(0.75, "fraction of patches removed (Sec. 4: 0.75 works best)")
    masking: str = _opt("random", "which patches are removed (Table 1f): random (the paper's), block (BEiT-style "
                                  "rectangles) or grid (one patch kept per 2x2 cell; needs --mask-ratio 0.75)",
                        choices=MASKINGS)
    norm_pix_loss: bool | None = _opt(None, "reconstruct per-patch normalised pixels (Sec. 3: the paper's best "
                                            "features)")
    model_overrides: dict[str, Any] | None = _opt(
        None, "change another model field, e.g. --model-override depth=6 (repeatable; values are JSON)")
    # data
    data: str | None = _opt(None, "folder of images (flat or one subfolder per class), or tar shards (a "
                                  "mae-make-shards folder, .tar files, a brace pattern like 'train-{0000..0099}.tar', "
                                  "several joined by '::'), local or by URL: http(s)://, or s3:// gs:// az:// hf:// "
                                  "with pip install 'mae-pytorch[remote]'; default: scikit-image's bundled photographs")
    repeat: int | None = _opt(None, "each image appears this many times per epoch, with different crops")
    num_workers: int = _opt(2, "data-loader processes per training process")
    # continued pretraining (mae.train.continued)
    init: str | None = _opt(None, "start from the encoder and decoder of a full MAE checkpoint (an official *_full or "
                                  "mae_visualize file, a Hugging Face ViTMAEForPreTraining folder, a mae-pretrain run "
                                  "or checkpoint folder) with a fresh optimizer and schedule; the model is the one "
                                  "these flags describe, and a checkpoint that does not fit it is refused")
    init_decoder: str = _opt("checkpoint", "with --init: the checkpoint's decoder, or 'fresh' to train a new one (the "
                                           "only way to start from an encoder-only file)", choices=INIT_DECODERS)
    # optimisation
    batch_size: int | None = _opt(None, "images per process per micro-step (paper: 64 on each of 8 GPUs x accum 8)")
    accum_iter: int = _opt(1, "micro-steps per optimizer step (effective batch = batch * accum * world size)")
    epochs: int | None = _opt(None, "epochs to train in total")
    warmup_epochs: float | None = _opt(None, "epochs of linear warm-up (per iteration); with a shorter --epochs than "
                                             "the recipe's, the recipe's fraction of it once its warm-up would not fit")
    blr: float | None = _opt(None, "base learning rate; lr = blr * effective_batch / 256")
    lr: float | None = _opt(None, "absolute learning rate (overrides --blr)")
    min_lr: float = _opt(0.0, "floor of the cosine decay")
    weight_decay: float = _opt(0.05, "AdamW weight decay (not on biases and norms)")
    # execution
    precision: str = _opt("auto", "auto (bf16 on CUDA when supported, else fp32), fp32, bf16, or fp16 with a grad "
                                  "scaler", choices=PRECISIONS)
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N (under torchrun each process takes cuda:LOCAL_RANK)")
    compile: bool = _opt(False, "torch.compile the model")
    decode_device: str = _opt("cpu", "where JPEGs are decoded: cpu (in the data-loader workers) or cuda (nvJPEG on "
                                     "the training GPU; workers only read files and draw crops, other formats are "
                                     "still decoded in the workers)", choices=DECODE_DEVICES)
    # None leaves torch's setting (one per core, or OMP_NUM_THREADS). On a machine shared with other jobs, 1 avoids
    # threads waiting on each other.
    threads: int | None = _opt(None, "torch CPU threads per process (default: torch's own setting, i.e. the cores or "
                                     "OMP_NUM_THREADS); 1 is faster for small models on a machine busy with other jobs")
    seed: int = _opt(0, "random seed (crops, flips, masks and initial weights)")
    # divergence: skip, then roll back (mae.runtime.loop; docs/pretraining.md "Long runs")
    nan_patience: int = _opt(3, "a step whose loss or gradient is NaN/inf is skipped (nothing is applied, it is "
                                "logged); after this many skipped steps in a row the run rolls back to the state it "
                                "kept at the last epoch end, lowers the lr by --rollback-lr-factor for the rest of "
                                "the run and replays the lost steps on another data order; 0: stop at the first "
                                "non-finite step instead")
    max_rollbacks: int = _opt(3, "rollbacks a run may make; the next divergence stops it with an error, keeping the "
                                 "last good checkpoint")
    rollback_lr_factor: float = _opt(0.5, "each rollback multiplies the lr by this for the rest of the run, in (0, 1]")
    # output
    output_dir: str = _opt("runs", "folder holding run folders")
    name: str | None = _opt(None, "run folder name (default: 'default' for the photographs, else <data>-<model>)")
    save_every: int = _opt(1, "epochs between updates of checkpoints/last (also written at the end)")
    keep_every: int | None = _opt(None, "epochs between kept checkpoints checkpoints/epoch_XXXX (0: none)")
    stop_after_epoch: int | None = _opt(None, "leave cleanly after this epoch (continue later with --resume), "
                                              "e.g. before a job's time limit")
    log_every: int = _opt(1, "optimizer steps between lines of metrics.jsonl")
    progress: bool = _opt(True, "show a progress bar per epoch (on a terminal)")
    figures: bool = _opt(True, "write loss.png and reconstructions.png when the run ends")
    tensorboard: bool = _opt(False, "also log to <run>/tensorboard (pip install 'mae-pytorch[tensorboard]')")
    peak_tflops: float | None = _opt(None, "peak TFLOP/s of one device, for the model FLOPs utilisation (MFU) in the "
                                           "epoch log (default: the vendors' dense bf16 datasheet figure for known "
                                           "GPUs, H100 SXM and H200 989, A100 312; otherwise no MFU)")
    # online evaluation (mae.train.online): needs the eval extra
    eval_every: int = _opt(0, "epochs between online evaluations (0: off; on, the starting weights are scored too, "
                              "as epoch 0): kNN top-1 of the encoder on --eval-data "
                              "(mae-knn's protocol), masked-patch error and PSNR on a fixed held-out batch, and "
                              "<run>/online/recon_epoch_XXXX.png; needs pip install 'mae-pytorch[eval]'")
    eval_data: str | None = _opt(None, "labelled folder with train/<class>/ and val/<class>/ for the online kNN "
                                       "(default: scikit-learn's digits at the run's image size)")
    eval_images: int = _opt(256, "at most this many images of each --eval-data split (train: the kNN bank, val: the "
                                 "queries) in the online kNN: a fixed subset, stratified by class, the same at every "
                                 "evaluation and in every run; it sets the cost of an evaluation (docs/pretraining.md)")
    eval_pool: str = _opt("mean", "feature of the online kNN: mean (of the patch tokens, which the reconstruction "
                                  "loss trains) or cls (mae-knn's default; MAE's loss barely reaches it)",
                          choices=EVAL_POOLS)
    keep_best: bool = _opt(False, "keep checkpoints/best, the epoch with the highest online kNN top-1 (needs "
                                  "--eval-every)")
    overwrite: bool = _opt(False, "delete a previous run of mae-pretrain in the same folder and start afresh")

    def __post_init__(self) -> None:
        if self.model is not None and self.model not in list_models():
            raise ValueError(f"unknown model preset {self.model!r}; valid presets: {', '.join(list_models())}")
        # Paths are made absolute: a resumed run (from another working directory) finds the same files.
        for name, expected in (("data", "a folder path, shards or None (the built-in photographs)"),
                               ("init", "a checkpoint path or None (a fresh model)"),
                               ("eval_data", "a labelled folder path or None (the built-in digits)")):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(value).strip()):
                raise ValueError(f"{name} must be {expected}, got {value!r}")
            object.__setattr__(self, name, absolute_paths(value))
        defaults = source_defaults(self.data, self.model)
        if self.warmup_epochs is None and self.epochs is not None:
            # A shorter run than the recipe's keeps the recipe's warm-up fraction once its warm-up would not fit.
            fraction = defaults["warmup_epochs"] / defaults["epochs"]
            defaults["warmup_epochs"] = min(defaults["warmup_epochs"], fraction * check_positive_int(self.epochs,
                                                                                                       "epochs"))
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self._check_counts()
        self._check_model()
        self._check_optimisation()
        for name in ("norm_pix_loss", "compile", "progress", "figures", "tensorboard", "overwrite", "keep_best"):
            check_bool(getattr(self, name), name)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_device_name(self.device)
        check_run_name(self.name)
        if self.init_decoder not in INIT_DECODERS:
            raise ValueError(f"init_decoder must be one of {INIT_DECODERS}, got {self.init_decoder!r}")
        if self.init_decoder == "fresh" and self.init is None:
            raise ValueError("init_decoder 'fresh' replaces the decoder of an --init checkpoint: pass --init PATH too")
        if self.peak_tflops is not None and check_finite(self.peak_tflops, "peak_tflops") <= 0:
            raise ValueError(f"peak_tflops must be positive, got {self.peak_tflops!r}")
        if self.decode_device not in DECODE_DEVICES:
            raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {self.decode_device!r}")
        if self.keep_best and not self.eval_every:
            raise ValueError("keep_best needs online evaluation to rank the epochs: pass --eval-every N (N > 0) too")
        if self.eval_pool not in EVAL_POOLS:
            raise ValueError(f"eval_pool must be one of {EVAL_POOLS}, got {self.eval_pool!r}")

    def _check_counts(self) -> None:
        for name in ("img_size", "patch_size", "repeat", "batch_size", "accum_iter", "epochs", "save_every",
                     "log_every", "eval_images"):
            check_positive_int(getattr(self, name), name)
        for name in ("stop_after_epoch", "threads"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name)
        for name in ("num_workers", "keep_every", "seed", "nan_patience", "max_rollbacks", "eval_every"):
            check_non_negative_int(getattr(self, name), name)

    def _check_model(self) -> None:
        if self.model_overrides is not None:
            if not isinstance(self.model_overrides, dict):
                raise TypeError(f"model_overrides must be a dict of MAEConfig fields, got {self.model_overrides!r}")
            own_flags = sorted(set(self.model_overrides) & {"img_size", "patch_size", "mask_ratio", "masking",
                                                            "norm_pix_loss"})
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
        if check_finite(self.mask_ratio, "mask_ratio") <= 0.0 or self.mask_ratio >= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        self.model_config  # noqa: B018 (builds the MAEConfig: unknown or invalid overrides raise here, with names)

    def _check_optimisation(self) -> None:
        for name in ("blr", "min_lr", "weight_decay", "warmup_epochs"):
            check_finite(getattr(self, name), name, low=0.0)
        if not 0.0 < check_finite(self.rollback_lr_factor, "rollback_lr_factor") <= 1.0:
            raise ValueError(f"rollback_lr_factor must be in (0, 1], got {self.rollback_lr_factor!r}")
        if self.lr is not None and check_finite(self.lr, "lr") <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}); pass --warmup-epochs "
                "(the paper warms up for 40 of 800 epochs)"
            )

    @property
    def model_config(self) -> MAEConfig:
        """The model this run trains."""
        overrides = {"img_size": self.img_size, "patch_size": self.patch_size, "mask_ratio": self.mask_ratio,
                     "masking": self.masking, "norm_pix_loss": self.norm_pix_loss}
        return MAEConfig.from_name(self.model, **(self.model_overrides or {}), **overrides)

    @property
    def recovery(self) -> Recovery | None:
        """The loop's policy for non-finite steps (None with nan_patience 0: stop at the first)."""
        if not self.nan_patience:
            return None
        return Recovery(self.nan_patience, self.max_rollbacks, self.rollback_lr_factor)

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        if self.data is None:
            return "default"
        return f"{slug(self.data, 'data')}-{self.model}"

    @classmethod
    def default_text(cls, field: dataclasses.Field) -> str:
        """Defaults that depend on the data source say both values."""
        demo, paper = source_defaults(None, cls.model), source_defaults("data", cls.model)
        if field.name not in demo:
            return str(field.default)
        paper_text = "the preset's" if field.name == "patch_size" else paper[field.name]
        return f"{demo[field.name]} on the built-in photographs, {paper_text} with --data"
