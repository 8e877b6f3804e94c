"""Load and save weights: the released MAE files, our own directories, Hugging Face ViTMAE, safely.

What is read (``read_checkpoint``), detected from the file's contents, never from its name:

* our directories (``save_pretrained``, the training CLI's checkpoints): ``config.json`` (``MAEConfig`` fields) +
  ``model.safetensors``; other files there (``train_state.pt``) are ignored;
* the official release files, ``torch.save({'model': state_dict, ...})``: encoder-only (``mae_pretrain_vit_*``),
  full (``mae_visualize_vit_*``, ``*_full``), and fine-tuned ones (``fc_norm``/``head`` instead of ``norm``);
* Hugging Face ViTMAE directories (``config.json`` with model_type "vit_mae" + ``model.safetensors`` or
  ``pytorch_model.bin``) and bare HF state dicts, ``ViTMAEForPreTraining`` or ``ViTMAEModel``;
* any plain state dict with our keys (``.safetensors``, ``.pth``, or an in-memory mapping).

Safety: pickled files go through ``torch.load(weights_only=True)`` only, which refuses to rebuild arbitrary Python
objects (the one extra class allowed is ``argparse.Namespace``, the ``'args'`` entry of the release code's training
checkpoints; it only holds attributes). A file that would need more is refused with ``UnsafeCheckpointError``.
Safetensors is preferred whenever a directory holds both.

When the model's image size differs from the checkpoint's, the position tables are adapted: a fixed sin-cos table is
regenerated exactly for the new grid; any other (learned, e.g. fine-tuned) table is resized bicubically, cls row kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import to_pair
from .config import PRESETS, MAEConfig
from .functional import sincos_pos_embed_2d
from .interop.hf import config_from_hf, hf_to_mae_state_dict, is_hf_state_dict

if TYPE_CHECKING:
    from .model import MaskedAutoEncoder

__all__ = [
    "Checkpoint",
    "LoadReport",
    "UnsafeCheckpointError",
    "adapt_pos_embed",
    "from_pretrained",
    "infer_config",
    "load_checkpoint",
    "load_pretrained",
    "read_checkpoint",
    "resize_pos_embed",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_TAG = "mae-pytorch"
_PICKLED_WEIGHTS = ("pytorch_model.bin", "model.pth", "model.pt")
_TABLES = ("pos_embed", "decoder_pos_embed")
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers
_FINETUNE_HEAD = ("fc_norm.", "head.")  # what fine-tuned files carry instead of norm.*


class UnsafeCheckpointError(ValueError):
    """A pickled file needs Python objects that ``torch.load(weights_only=True)`` will not build (could run code)."""


@dataclass
class Checkpoint:
    """Weights read from somewhere, renamed to our (official) keys, plus what is known about them."""

    state_dict: dict[str, Tensor]
    format: str  # "mae-pytorch" | "official" | "hf-vitmae" | "state-dict"
    source: str
    config: dict[str, Any] | None = None  # MAEConfig fields, when the source has a config file
    skipped: list[str] = field(default_factory=list)  # source keys with no counterpart here
    notes: list[str] = field(default_factory=list)


@dataclass
class LoadReport:
    """What a load did: which weights came from the file and which parts stay at initialisation."""

    source: str
    format: str
    config: MAEConfig
    loaded: list[str] = field(default_factory=list)  # model keys filled from the file
    missing: list[str] = field(default_factory=list)  # model keys left at initialisation
    skipped: list[str] = field(default_factory=list)  # file keys not used
    notes: list[str] = field(default_factory=list)

    @property
    def decoder_loaded(self) -> bool:
        return not any(_is_decoder_key(k) for k in self.missing)

    def warn_if_partial(self, stacklevel: int = 2) -> None:
        """Issue a ``UserWarning`` carrying this report if any model tensor or file tensor went unused."""
        if self.missing or self.skipped:
            warnings.warn(str(self), UserWarning, stacklevel=stacklevel + 1)

    def __str__(self) -> str:
        lines = [
            f"Loaded {self.source} ({self.format}): {len(self.loaded)} tensors loaded, {len(self.missing)} left at "
            f"initialisation, {len(self.skipped)} skipped."
        ]
        lines += [f"  note: {n}" for n in self.notes]
        if self.missing:
            lines.append(f"  left at initialisation: {_summarise(self.missing)}")
        if self.skipped:
            lines.append(f"  skipped from the file: {_summarise(self.skipped)}")
        return "\n".join(lines)


def _summarise(keys: list[str]) -> str:
    """Group block keys by module so a report stays readable: 'decoder_blocks.{0..7}.* (96 tensors)'."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(re.sub(r"\.\d+\..*$", ".*", k) if re.search(r"blocks\.\d+\.", k) else k, []).append(k)
    return ", ".join(g if len(v) == 1 and g == v[0] else f"{g} ({len(v)} tensors)" for g, v in groups.items())


def _is_decoder_key(key: str) -> bool:
    return key.startswith("decoder") or key == "mask_token"


# ---------------------------------------------------------------------------------------------- reading


def read_checkpoint(source: str | os.PathLike | Mapping[str, Any]) -> Checkpoint:
    """Read weights from a file, a directory, or an in-memory (state) dict, without building a model.

    Args:
        source: see the module docstring for the layouts recognised.

    Returns:
        A ``Checkpoint`` whose ``state_dict`` uses our keys (HF files are converted).

    Raises:
        FileNotFoundError: the path does not exist, or a directory holds no weights file.
        UnsafeCheckpointError: a pickled file that could run code.
        ValueError: a truncated or non-checkpoint file, or a config that describes something else.
    """
    if isinstance(source, Mapping):
        return _from_object(dict(source), "<state dict>", config=None)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a state dict, got {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        return _read_directory(path)
    return _from_object(_load_file(path), str(path), config=None)


def _read_directory(path: Path) -> Checkpoint:
    config = None
    if (path / CONFIG_NAME).is_file():
        try:
            config = json.loads((path / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path / CONFIG_NAME} is not valid JSON: {err}") from err
        if not isinstance(config, dict):
            raise ValueError(f"{path / CONFIG_NAME} must hold a JSON object, got {type(config).__name__}")
    # Safetensors first: it cannot carry code, and it is what we and Hugging Face write.
    for name in (WEIGHTS_NAME, *_PICKLED_WEIGHTS):
        if (path / name).is_file():
            return _from_object(_load_file(path / name), str(path), config=config)
    if (path / f"{WEIGHTS_NAME}.index.json").is_file():
        raise ValueError(f"{path} holds a sharded checkpoint (model.safetensors.index.json), which is not supported")
    raise FileNotFoundError(
        f"directory {str(path)!r} has no weights file; expected one of {[WEIGHTS_NAME, *_PICKLED_WEIGHTS]}"
    )


def _load_file(path: Path) -> Any:
    """The object stored in ``path``, read without ever running pickled code."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    try:
        # argparse.Namespace is the release code's saved 'args'; rebuilding it only sets attributes.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
        if blocked:
            raise UnsafeCheckpointError(
                f"refused to load {path}: it holds a pickled reference to {blocked.group(1)!r}, which is not a "
                "tensor or plain container; unpickling it could run arbitrary code. mae-pytorch reads pickled "
                "files with torch.load(weights_only=True) only. If you trust the file, re-save just its state dict "
                "(torch.save(obj['model'], ...)) or convert it to safetensors."
            ) from None
        raise ValueError(f"{path} is not a PyTorch checkpoint (or is truncated/corrupt): {err}") from None
    except Exception as err:  # garbage makes the unpickler fail in many ways (EOFError, KeyError, IndexError, ...)
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from None


def _from_object(obj: Any, source: str, config: dict[str, Any] | None) -> Checkpoint:
    """Find the state dict inside a loaded object and rename it to our keys."""
    fmt = "state-dict"
    if isinstance(obj, dict) and isinstance(obj.get("model"), Mapping):
        obj, fmt = obj["model"], "official"  # the release layout: {'model': state_dict, 'optimizer': ..., ...}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{source} is not a model checkpoint: expected a state dict of tensors, found {what}")
    state_dict = dict(obj)
    notes: list[str] = []
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
            notes.append(f"removed the {prefix!r} prefix from every key")

    skipped: list[str] = []
    model_config = None
    if config is not None and "model_type" in config:
        model_config, hf_notes = config_from_hf(config)
        notes += hf_notes
        fmt = "hf-vitmae"
    elif config is not None:
        fields = {f.name for f in dataclasses.fields(MAEConfig)}
        if config.get("format", FORMAT_TAG) != FORMAT_TAG or not {"embed_dim", "depth"} <= set(config):
            raise ValueError(
                f"{source}/{CONFIG_NAME} is neither a mae-pytorch config (MAEConfig fields) nor a Hugging Face "
                f"ViTMAE config (model_type 'vit_mae'); keys found: {sorted(config)}"
            )
        model_config = {k: v for k, v in config.items() if k in fields}  # unknown keys ("format", ...) ignored
        fmt = FORMAT_TAG
    if is_hf_state_dict(state_dict):
        state_dict, skipped = hf_to_mae_state_dict(state_dict)
        fmt = "hf-vitmae"
    return Checkpoint(state_dict, fmt, source, model_config, skipped, notes)


# ---------------------------------------------------------------------------------------------- config inference


def _count_blocks(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def infer_config(state_dict: Mapping[str, Tensor], **overrides: Any) -> tuple[MAEConfig, list[str]]:
    """Read an ``MAEConfig`` off the tensor shapes of a state dict with our keys; ``overrides`` win.

    Widths, depths, patch size, channels and MLP ratio come from shapes; the image size from the length of
    ``pos_embed`` assuming a square grid (as in every released file); head counts, which no shape reveals, from the
    preset with the same width and depth (else they must be given). Without decoder weights the decoder is the
    matching preset's, else the paper's (512 wide, 8 blocks, 16 heads).

    Returns:
        ``(config, notes)``.
    """
    notes: list[str] = []
    required = ("cls_token", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    absent = [k for k in required if k not in state_dict]
    if absent:
        raise ValueError(
            f"cannot infer the model from the weights: keys {absent} are missing (is this an MAE/ViT checkpoint?); "
            "to load it anyway, build the model yourself and call load_checkpoint(model, source)"
        )
    embed_dim = state_dict["cls_token"].shape[-1]
    _, in_chans, ph, pw = state_dict["patch_embed.proj.weight"].shape
    found: dict[str, Any] = {
        "embed_dim": embed_dim,
        "depth": _count_blocks(state_dict, "blocks"),
        "patch_size": (ph, pw),
        "in_chans": in_chans,
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    }
    if "pos_embed" in state_dict:
        num_patches = state_dict["pos_embed"].shape[1] - 1
        side = math.isqrt(num_patches)
        if side * side == num_patches:
            found["img_size"] = (side * ph, side * pw)
        elif "img_size" not in overrides:
            raise ValueError(
                f"pos_embed has {num_patches} patch rows, not a square grid; pass img_size=(H, W) to say which grid"
            )
    elif "img_size" not in overrides:
        notes.append(f"no pos_embed in the weights to read the image size from; using {MAEConfig().img_size}")
    if "decoder_embed.weight" in state_dict:
        found["decoder_embed_dim"] = state_dict["decoder_embed.weight"].shape[0]
        found["decoder_depth"] = _count_blocks(state_dict, "decoder_blocks")

    preset = next(
        (n for n, p in PRESETS.items() if (p.embed_dim, p.depth) == (found["embed_dim"], found["depth"])), None
    )
    if preset is not None:
        p = PRESETS[preset]
        found["num_heads"] = p.num_heads
        decoder = (found.get("decoder_embed_dim", p.decoder_embed_dim), found.get("decoder_depth", p.decoder_depth))
        if decoder == (p.decoder_embed_dim, p.decoder_depth):
            found.update(decoder_embed_dim=p.decoder_embed_dim, decoder_depth=p.decoder_depth,
                         decoder_num_heads=p.decoder_num_heads)
        notes.append(f"encoder shapes match the preset {preset!r}; heads taken from it")
    defaults = MAEConfig()
    if "decoder_embed_dim" not in found:
        found.update(decoder_embed_dim=defaults.decoder_embed_dim, decoder_depth=defaults.decoder_depth)
    if "decoder_num_heads" not in found and found["decoder_embed_dim"] == defaults.decoder_embed_dim:
        found["decoder_num_heads"] = defaults.decoder_num_heads
    found.update(overrides)
    unknown = [k for k in ("num_heads", "decoder_num_heads") if k not in found]
    if unknown:
        raise ValueError(
            f"the weights do not reveal {unknown} (embed_dim={found['embed_dim']}, depth={found['depth']}, "
            f"decoder_embed_dim={found['decoder_embed_dim']} match no preset); pass them, e.g. num_heads=..."
        )
    if "norm_pix_loss" not in overrides:
        notes.append("norm_pix_loss is not stored in the weights; using False unless you pass norm_pix_loss=True")
    return MAEConfig(**found), notes


# ---------------------------------------------------------------------------------------------- position tables


def resize_pos_embed(table: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
    """Resize a learned position table (1, 1 + gh*gw, D) to another grid, bicubically; the cls row is kept.

    Bicubic, corners not aligned, in float32: the interpolation the MAE fine-tuning code uses for larger images.
    """
    (gh, gw), (nh, nw) = src_grid, dst_grid
    if table.ndim != 3 or table.shape[1] != 1 + gh * gw:
        raise ValueError(f"table must be (1, 1 + {gh}*{gw}, D) for grid {src_grid}, got {tuple(table.shape)}")
    D = table.shape[-1]
    grid = table[:, 1:].float().reshape(1, gh, gw, D).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False)  # (1, D, nh, nw)
    patches = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, D).to(table.dtype)  # (1, nh*nw, D)
    return torch.cat([table[:, :1], patches], dim=1)  # (1, 1 + nh*nw, D)


def adapt_pos_embed(
    table: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], name: str = "pos_embed"
) -> tuple[Tensor, str | None]:
    """Make a file's position table (1, 1 + L, D) fit another patch grid.

    A fixed sin-cos table is regenerated exactly for ``dst_grid``; any other (learned) table is resized bicubically
    with its cls row kept (``resize_pos_embed``). An all-zero table, never intended (it hides every position;
    transformers 5 leaves one in a freshly built ViTMAE), is replaced by the sin-cos table.

    Returns:
        ``(table, note)``; the note says what was done, None if the table was used as it is.
    """
    D = table.shape[-1]
    if not bool(table.any()):
        note = f"{name} in the file is all zeros; replaced by the fixed sin-cos table"
        return sincos_pos_embed_2d(D, dst_grid).unsqueeze(0).to(table.dtype), note
    if tuple(src_grid) == tuple(dst_grid):
        return table, None
    if torch.allclose(table.float(), sincos_pos_embed_2d(D, src_grid).unsqueeze(0), atol=1e-5, rtol=0):
        note = f"{name}: sin-cos table regenerated for grid {tuple(dst_grid)} (file: {tuple(src_grid)})"
        return sincos_pos_embed_2d(D, dst_grid).unsqueeze(0).to(table.dtype), note
    note = f"{name}: learned table resized bicubically from grid {tuple(src_grid)} to {tuple(dst_grid)} (cls row kept)"
    return resize_pos_embed(table, src_grid, dst_grid), note


def _source_grid(table: Tensor, ckpt: Checkpoint) -> tuple[int, int]:
    """The grid a file's table was made for: its config's, else the square one (as in all released files)."""
    num_patches = table.shape[1] - 1
    if ckpt.config is not None and "img_size" in ckpt.config and "patch_size" in ckpt.config:
        H, W = to_pair(ckpt.config["img_size"], "img_size")
        ph, pw = to_pair(ckpt.config["patch_size"], "patch_size")
        if (H // ph) * (W // pw) == num_patches:
            return H // ph, W // pw
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"cannot tell the grid of a position table with {num_patches} patch rows (not a square); "
            "load it into a model of the checkpoint's own img_size"
        )
    return side, side


# ---------------------------------------------------------------------------------------------- loading


def load_checkpoint(
    model: MaskedAutoEncoder, source: str | os.PathLike | Mapping[str, Any] | Checkpoint, *, strict: bool = False
) -> LoadReport:
    """Load weights into an existing model and report what was loaded.

    Without ``strict`` the partial files users have are accepted: encoder-only files (decoder stays at
    initialisation) and fine-tuned files (``fc_norm``/``head`` skipped, ``norm`` stays at initialisation). Any
    other missing or unexpected key is an error, so a wrong file never loads silently half-way.

    Args:
        model: the ``MaskedAutoEncoder`` to fill (its config decides the shapes; tables are adapted to it).
        source: a path, a state dict, or a ``Checkpoint`` from ``read_checkpoint``.
        strict: require every model key and use every file key.

    Raises:
        ValueError: missing/unexpected keys (listed by name) or shape mismatches (both shapes shown).
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    state_dict = dict(ckpt.state_dict)
    notes = list(ckpt.notes)
    expected = model.state_dict()
    for name in _TABLES:
        if name in state_dict and name in expected:
            src_grid = _source_grid(state_dict[name], ckpt)
            state_dict[name], note = adapt_pos_embed(state_dict[name], src_grid, model.config.grid_size, name)
            notes += [note] if note else []

    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(f"{ckpt.source}: shape mismatch for {len(mismatched)} tensor(s): " + "; ".join(mismatched))

    decoder_missing = [k for k in missing if _is_decoder_key(k)]
    finetuned = any(k.startswith("fc_norm.") for k in unexpected)
    allowed_missing = set()
    if decoder_missing and len(decoder_missing) == sum(_is_decoder_key(k) for k in expected):
        allowed_missing |= set(decoder_missing)
        notes.append(
            "decoder left at initialisation: this file is encoder-only, reconstructions will be meaningless until "
            "the decoder is trained"
        )
    if finetuned:
        allowed_missing |= {k for k in missing if k.startswith("norm.")}
        notes.append("fine-tuned file: it carries fc_norm/head instead of norm; the encoder's final norm stays at "
                     "initialisation and fc_norm/head are skipped")
    absent_tables = [k for k in _TABLES if k in missing and k not in allowed_missing]
    if absent_tables:
        # The tables are fixed functions of the grid, so a file that left them out loses nothing.
        allowed_missing |= set(absent_tables)
        notes.append(f"{absent_tables} not in the file: the fixed sin-cos tables built with the model are used")
    allowed_unexpected = {k for k in unexpected if k.startswith(_FINETUNE_HEAD)}
    bad_missing = [k for k in missing if strict or k not in allowed_missing]
    # Source keys that no conversion could place (ckpt.skipped) mean a file of another kind: always an error.
    bad_unexpected = [k for k in unexpected if strict or k not in allowed_unexpected] + ckpt.skipped
    if bad_missing or bad_unexpected:
        raise ValueError(
            f"{ckpt.source} does not fit the model ({'strict' if strict else 'non-strict'} load): "
            f"missing keys {bad_missing}; unexpected keys {bad_unexpected}"
        )
    if model.device.type == "meta":
        notes.append("the model is on the meta device: names and shapes checked, no values copied")
    else:
        with torch.no_grad():
            model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
    return LoadReport(
        source=ckpt.source, format=ckpt.format, config=model.config,
        loaded=[k for k in expected if k in state_dict], missing=missing,
        skipped=sorted(unexpected) + ckpt.skipped, notes=notes,
    )


def load_pretrained(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = False,
    **overrides: Any,
) -> tuple[MaskedAutoEncoder, LoadReport]:
    """Build the model a checkpoint describes and load it.

    The config comes from the checkpoint's config file, else from the tensor shapes (``infer_config``);
    ``overrides`` (any ``MAEConfig`` field: img_size, norm_pix_loss, mask_ratio, ...) win. A different
    ``img_size`` adapts the position tables.

    Returns:
        ``(model, report)``; ``print(report)`` says what was loaded and what stays at initialisation.
    """
    from .model import MaskedAutoEncoder

    ckpt = read_checkpoint(source)
    if ckpt.config is not None:
        config = MAEConfig(**{**ckpt.config, **overrides})
        notes = []
    else:
        config, notes = infer_config(ckpt.state_dict, **overrides)
    model = MaskedAutoEncoder.from_config(config, device=device, dtype=dtype)
    report = load_checkpoint(model, ckpt, strict=strict)
    report.notes[:0] = notes
    return model, report


# ---------------------------------------------------------------------------------------------- saving


def write_weights_dir(directory: str | os.PathLike, config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Path:
    """Write ``config.json`` + ``model.safetensors``; each replaces an existing file only once fully written."""
    from safetensors.torch import save_file

    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"directory {str(path)!r} exists and is a file, expected a directory")
    path.mkdir(parents=True, exist_ok=True)
    # safetensors wants contiguous CPU tensors that do not share memory.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    for name, write in (
        (WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})),
        (CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(dict(config), indent=2) + "\n")),
    ):
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path / name)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def save_pretrained(model: MaskedAutoEncoder, directory: str | os.PathLike) -> Path:
    """Save ``model`` as ``directory/config.json`` (``MAEConfig`` fields) + ``directory/model.safetensors``.

    ``load_pretrained(directory)`` rebuilds it bit-exactly (float32 by default, which holds bf16/fp16 values exactly;
    pass ``dtype=`` to get the saved dtype back).
    """
    config = {**model.config.to_dict(), "format": FORMAT_TAG}
    return write_weights_dir(directory, config, model.state_dict())


def from_pretrained(source: str | os.PathLike | Mapping[str, Any], **kwargs: Any) -> MaskedAutoEncoder:
    """``load_pretrained`` without the report, warning with it when something was left out or skipped."""
    model, report = load_pretrained(source, **kwargs)
    report.warn_if_partial(stacklevel=3)
    return model
