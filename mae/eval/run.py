"""What the three protocols share: the run folder, epochs of the one training loop, evaluation, checkpoints, results.

A run folder ``<output_dir>/<name>/`` holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one record per
epoch), ``checkpoint.pt`` (after every epoch; ``--resume`` continues from it) and ``results.json``. Only rank 0
writes; every file is replaced atomically.

Exact resume: the learning rate is a pure function of the optimizer step, and every source of randomness (data order,
augmentation, mixup, drop path) is re-seeded at the start of each epoch from (seed, epoch, rank). An epoch therefore
runs identically whether the run went through or was resumed before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from ..io.atomic import atomic_write, write_json
from ..io.safe_read import read_json
from ..model import MaskedAutoEncoder
from ..runtime.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    gather_rows,
    init_distributed,
    shard_indices,
    shutdown,
)
from ..runtime.loop import Schedule, Trainer, autocast, resolve_precision
from ..runtime.run_folder import LOCK_FILE, RunLock
from .config import RESUMABLE_FIELDS, SMALL_DATA_IMAGES, EvalConfig
from .data import LabelledData
from .encoder import load_encoder

__all__ = [
    "CHECKPOINT_FILE", "CONFIG_FILE", "FEATURES_FILE", "METRICS_FILE", "RESULTS_FILE", "Run",
    "load_resume",
]

CONFIG_FILE, METRICS_FILE, RESULTS_FILE = "config.json", "metrics.jsonl", "results.json"
CHECKPOINT_FILE = "checkpoint.pt"  # linear probe and fine-tuning: written after every epoch
FEATURES_FILE = "features.pt"  # kNN: the extracted features, all a resumed kNN run needs


def load_resume(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint of a run: ``path`` is the run folder or its checkpoint file (read with weights_only)."""
    p = Path(path).expanduser()
    file = next((p / n for n in (CHECKPOINT_FILE, FEATURES_FILE) if (p / n).is_file()), p) if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"--resume {str(path)!r}: no {CHECKPOINT_FILE} or {FEATURES_FILE} there; expected "
                                "a run folder of mae-knn / mae-linprobe / mae-finetune or its checkpoint file")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise ValueError(f"--resume {str(file)!r} is corrupt or unreadable: {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict) or "config" not in ckpt or "protocol" not in ckpt:
        raise ValueError(f"--resume {str(file)!r} is not a checkpoint of an evaluation run")
    ckpt["path"] = str(file)
    return ckpt


# What an evaluation run writes in its folder; a folder holding only the first three (an attempt that stopped before
# saving any work) is started over, anything else is refused.
_OURS_UNSAVED = {CONFIG_FILE, METRICS_FILE, LOCK_FILE}
_SAVED_WORK = (RESULTS_FILE, CHECKPOINT_FILE, FEATURES_FILE)


def _refusal(run_dir: Path, config: EvalConfig) -> str | None:
    """Why a new run may not start in ``run_dir`` (None: it may). Nothing is ever deleted here."""
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        return f"output path {str(run_dir)!r} exists and is not a directory"
    entries = {p.name for p in run_dir.iterdir()}
    if entries <= _OURS_UNSAVED:
        return None
    if any(name in entries for name in _SAVED_WORK):
        try:
            earlier = read_json(run_dir / CONFIG_FILE)
        except (OSError, ValueError):
            earlier = {}
        same = all(earlier.get(k) == getattr(config, k) for k in ("protocol", "checkpoint", "model", "data"))
        if same:
            return (f"output folder {str(run_dir)!r} already holds this {config.protocol} run; see or continue it "
                    f"with --resume {run_dir}, or start another with --name (nothing is deleted)")
        encoder = earlier.get("checkpoint") or earlier.get("model") or "another encoder"
        return (f"output folder {str(run_dir)!r} holds a run of {encoder} on {earlier.get('data') or 'the digits'}; "
                "pick another --name or --output-dir (nothing is deleted)")
    return (f"output folder {str(run_dir)!r} is not empty and does not hold an evaluation run "
            f"({', '.join(sorted(entries - _OURS_UNSAVED)[:3])}); pick another --name or --output-dir (nothing is "
            "deleted)")


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, NumPy (timm's mixup) and Python from (seed, epoch, rank)."""
    s = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)  # noqa: NPY002 (timm's Mixup draws from the legacy global generator)
    random.seed(s)


@dataclass
class Run:
    """One evaluation run: its config (resolved), the process group, the folder, and the checkpoint resumed from."""

    config: EvalConfig
    info: DistInfo
    run_dir: Path
    resumed: dict[str, Any] | None
    precision: str
    t0: float

    finished: dict[str, Any] | None = None  # the results of a finished run given to --resume

    @classmethod
    def execute(cls, config: EvalConfig, resume: str | os.PathLike | None, body: Callable[..., dict[str, Any]],
                *args: Any) -> dict[str, Any]:
        """Start the run, ``body(run, *args)``, and leave the process group whatever happens: every protocol's frame.

        The main process holds the run folder's lock throughout. ``--resume`` of a finished run prints its results
        and writes nothing.
        """
        run = cls.start(config, resume)
        try:
            with contextlib.ExitStack() as held:
                if run.info.is_main:
                    held.enter_context(RunLock(run.run_dir, f"mae-{config.protocol}"))
                if run.finished is not None:
                    return run.report(run.finished, finished=True)
                return body(run, *args)
        finally:
            shutdown(run.info)

    @classmethod
    def start(cls, config: EvalConfig, resume: str | os.PathLike | None) -> Run:
        """Check the output folder and the checkpoint to resume, then join the process group (nothing written yet)."""
        ckpt = load_resume(resume) if resume is not None else None
        run_dir = Path(config.output_dir).expanduser() / config.run_name
        finished = None
        if ckpt is not None:
            if ckpt["protocol"] != config.protocol:
                raise ValueError(f"--resume {ckpt['path']!r} is a {ckpt['protocol']} run, not {config.protocol}")
            saved = type(config).from_dict(ckpt["config"])
            given = {f: v for f, v in config.to_dict().items() if v is not None}  # None: "as before"
            changed = [(f, getattr(saved, f), v) for f, v in given.items()
                       if f not in RESUMABLE_FIELDS and getattr(saved, f) != v]
            if changed:
                details = "; ".join(f"{f}: checkpoint {a!r}, given {b!r}" for f, a, b in changed)
                raise ValueError(f"cannot change these settings when resuming {ckpt['path']!r}: {details}; only "
                                 f"{sorted(RESUMABLE_FIELDS)} may differ")
            config = saved.replace(**{f: v for f, v in given.items() if f in RESUMABLE_FIELDS})
            run_dir = Path(ckpt["path"]).parent
            if (run_dir / RESULTS_FILE).is_file():
                finished = read_json(run_dir / RESULTS_FILE)
        info = init_distributed(config.device)
        try:
            # Every process looks before any writes (the barrier), so all of them see the same folder.
            refusal = _refusal(run_dir, config) if ckpt is None else None
            barrier(info)
            if refusal:
                raise ValueError(refusal)
        except BaseException:
            shutdown(info)
            raise
        return cls(config, info, run_dir, ckpt, resolve_precision(config.precision, info.device), time.perf_counter(),
                   finished)

    def load_encoder(
        self, given: MaskedAutoEncoder | None, *, on_device: bool = True
    ) -> tuple[MaskedAutoEncoder, dict]:
        """The encoder the config names (``checkpoint`` or ``model``), or ``given``, and where it came from."""
        cfg = self.config
        return load_encoder(given if given is not None else cfg.checkpoint, cfg.model, img_size=cfg.img_size,
                            patch_size=cfg.patch_size, builtin_data=cfg.data is None, seed=cfg.seed,
                            device=self.device if on_device else None)

    def begin(self, config: EvalConfig, data: LabelledData, extra: dict[str, Any]) -> None:
        """Write the resolved config (rank 0), once the inputs are known to be valid, and say which recipe the data
        chose. What an earlier attempt of this run left without saving any work (``_refusal`` allowed it) is
        replaced."""
        self.config = config
        recipe = config.recipe(len(data.train))
        if self.info.is_main and self.resumed is None:
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        if self.info.is_main:
            if config.data is not None and recipe == "small-data":
                tqdm.write(f"mae-{config.protocol}: {len(data.train):,} training images (fewer than "
                           f"{SMALL_DATA_IMAGES:,}): the small-data recipe (docs/evaluation.md); flags you pass win")
            resolved = {"protocol": config.protocol, **config.to_dict(), "recipe": recipe,
                        "precision_used": self.precision, "world_size": self.info.world_size,
                        "device_used": str(self.info.device), "data_description": data.description,
                        "num_train": len(data.train), "num_classes": data.num_classes, **extra}
            write_json(self.run_dir / CONFIG_FILE, resolved)
        barrier(self.info)

    @property
    def device(self) -> torch.device:
        return self.info.device

    def autocast(self):
        return autocast(self.precision, self.device)

    def log(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def progress(self, total: int, desc: str):
        # None: shown on a terminal only, so the logs of batch jobs keep just the summary lines
        show = self.config.progress and self.info.is_main
        return tqdm(total=total, desc=desc, disable=None if show else True, leave=False, dynamic_ncols=True)

    def save(self, name: str, obj: dict[str, Any]) -> None:
        if self.info.is_main:
            state = {"protocol": self.config.protocol, "config": self.config.to_dict(), **obj}
            atomic_write(self.run_dir / name, lambda tmp: torch.save(state, tmp))
        barrier(self.info)

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        """Write ``results.json``, print the summary line, and return the results."""
        results = {"protocol": self.config.protocol, **results, "seconds": time.perf_counter() - self.t0,
                   "run_dir": str(self.run_dir)}
        if self.info.is_main:
            write_json(self.run_dir / RESULTS_FILE, results)
        return self.report(results)

    def report(self, results: dict[str, Any], *, finished: bool = False) -> dict[str, Any]:
        """Print the summary line (main process) and return ``results``."""
        if self.info.is_main:
            acc5 = f"  val_acc5 {results['val_acc5']:.2f}%" if "val_acc5" in results else ""
            seconds = "finished earlier, nothing rewritten" if finished else f"{results['seconds']:.1f} s"
            tqdm.write(f"mae-{self.config.protocol}: val_acc1 {results['val_acc1']:.2f}%{acc5}  ({seconds})  "
                       f"{self.run_dir / RESULTS_FILE}")
        return results

    # ------------------------------------------------------------------ data

    def eval_loader(self, dataset: Dataset) -> tuple[DataLoader, list[int]]:
        """This process's share of ``dataset`` (no padding, so nothing is counted twice), in order."""
        idx = shard_indices(len(dataset), self.info)
        loader = DataLoader(Subset(dataset, idx), batch_size=self.config.batch_size, shuffle=False,
                            num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda")
        return loader, idx

    @torch.no_grad()
    def extract(self, fn: Callable[[Tensor], Tensor], dataset: Dataset, desc: str) -> tuple[Tensor, Tensor]:
        """``fn(imgs)`` over a whole data set, gathered from every process: (N, ...) outputs and (N,) labels."""
        loader, _ = self.eval_loader(dataset)
        outs, labels = [], []
        with self.progress(len(loader), desc) as bar:
            for imgs, y in loader:
                with self.autocast():
                    outs.append(fn(imgs.to(self.device, non_blocking=True)).float())
                labels.append(y.to(self.device))
                bar.update()
        n = len(dataset)
        return gather_rows(torch.cat(outs), n, self.info), gather_rows(torch.cat(labels), n, self.info)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        """Cross-entropy and top-1 / top-5 accuracy (%) of ``model`` on ``dataset``, summed over processes."""
        was_training = model.training
        model.eval()
        loader, _ = self.eval_loader(dataset)
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)  # loss sum, top-1, top-5, count
        for imgs, y in loader:
            imgs, y = imgs.to(self.device, non_blocking=True), y.to(self.device)
            with self.autocast():
                logits = model(imgs).float()  # (B, C)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices == y.view(-1, 1)  # (B, k)
            totals += torch.stack([F.cross_entropy(logits, y, reduction="sum"), top[:, :1].sum(), top.sum(),
                                   torch.tensor(float(len(y)), device=self.device)]).double()
        model.train(was_training)
        loss, top1, top5, count = all_reduce_sum(totals, self.info).tolist()
        out = {"val_loss": loss / count, "val_acc1": 100 * top1 / count}
        if logits.shape[1] >= 5:
            out["val_acc5"] = 100 * top5 / count
        return out

    # ------------------------------------------------------------------ training

    def fit(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, train_set: Dataset, val_set: Dataset, *,
        loss_fn: Callable[[Tensor, Tensor], Tensor], batch_transform: Callable | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` (its trainable parameters) for ``config.epochs`` epochs with the one training loop
        (``mae.runtime.loop``), evaluating and saving a checkpoint after each. Each param group's lr is the
        schedule's lr times its ``lr_scale`` (default 1).

        Returns:
            The last epoch's validation metrics plus ``best_val_acc1`` and the number of steps.
        """
        cfg, info = self.config, self.info
        sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=False)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            drop_last=True, pin_memory=self.device.type == "cuda")
        if len(loader) == 0:
            raise ValueError(f"{len(train_set)} training samples give no full batch of batch_size={cfg.batch_size} "
                             f"on each of {info.world_size} process(es); lower --batch-size")
        schedule = Schedule.plan(batches_per_epoch=len(loader), accum_iter=cfg.accum_iter, batch_size=cfg.batch_size,
                                 world_size=info.world_size, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                                 blr=cfg.blr, lr=cfg.lr, min_lr=cfg.min_lr)
        start, best, last = 0, -1.0, {}
        if self.resumed is not None:
            model.load_state_dict(self.resumed["model"])
            start, best, last = self.resumed["epoch"], self.resumed["best_val_acc1"], self.resumed["last"]
            if start >= cfg.epochs:
                raise ValueError(f"--resume {self.resumed['path']!r} already finished its {cfg.epochs} epochs")
        trainer = Trainer(model, optimizer, schedule, info, precision=self.precision, accum_iter=cfg.accum_iter)
        if self.resumed is not None:
            trainer.resume(self.resumed["optimizer"], self.resumed["scaler"], self.resumed["step"])

        def loss_of(forward: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
            x, y = (t.to(self.device, non_blocking=True) for t in batch)
            if batch_transform is not None:
                x, y = batch_transform(x, y)
            return loss_fn(forward(x).float(), y)

        for epoch in range(start, cfg.epochs):
            t_epoch = time.perf_counter()
            _seed_epoch(cfg.seed, epoch, info.rank)
            sampler.set_epoch(epoch)
            model.train()
            train_loss = trainer.train_epoch(loader, loss_of, num_batches=len(loader), epoch=epoch,
                                             epochs=cfg.epochs, progress=cfg.progress)
            last = self.evaluate(model, val_set)
            best = max(best, last["val_acc1"])
            record = {"epoch": epoch + 1, "step": trainer.step, "lr": schedule.lr_at(trainer.step - 1),
                      "train_loss": train_loss, **last, "seconds": time.perf_counter() - t_epoch}
            self.log(record)
            if info.is_main and cfg.progress:
                tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            self.save(CHECKPOINT_FILE, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scaler": trainer.scaler.state_dict(), "epoch": epoch + 1,
                                        "step": trainer.step, "best_val_acc1": best, "last": last})
        return {**last, "best_val_acc1": best, "steps": trainer.step, "effective_batch": schedule.effective_batch,
                "lr": schedule.lr}
