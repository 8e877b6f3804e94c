"""Load policy: which partial files are accepted, what a load reports, and building the model a checkpoint describes.

Without ``strict`` the partial files users have are accepted: encoder-only files (the decoder stays at
initialisation) and fine-tuned files (``fc_norm``/``head`` skipped, ``norm`` stays at initialisation). Any other
missing or unexpected key, any shape mismatch, and integer or boolean tensors where the model holds floats are
errors, so a wrong file never loads silently half-way. Weights holding NaN or infinity (a diverged run) are refused,
naming the tensors, unless ``allow_non_finite=True`` asks for them (to inspect that run).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._checks import check_bool, non_finite_names
from ..config import MAEConfig
from ..model import MaskedAutoEncoder
from .formats import Checkpoint, read_checkpoint
from .infer import check_config_fits, infer_config
from .pos_embed import adapt_pos_embed, source_grid

__all__ = ["LoadReport", "from_pretrained", "is_decoder_key", "load_checkpoint", "load_pretrained"]

_TABLES = ("pos_embed", "decoder_pos_embed")
_FINETUNE_HEAD = ("fc_norm.", "head.")  # what fine-tuned files carry instead of norm.*


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
        return not any(is_decoder_key(k) for k in self.missing)

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


def is_decoder_key(key: str) -> bool:
    """Whether a state-dict key belongs to the decoder (what an encoder-only file lacks)."""
    return key.startswith("decoder") or key == "mask_token"


def _check_tensors(source: str, state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    """Shapes must match, and float weights must come from float tensors (an int or bool tensor is no weight)."""
    common = [k for k in expected if k in state_dict]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in common if state_dict[k].shape != expected[k].shape]
    if mismatched:
        raise ValueError(f"{source}: shape mismatch for {len(mismatched)} tensor(s): " + "; ".join(mismatched))
    not_float = [f"{k} ({state_dict[k].dtype})" for k in common
                 if expected[k].is_floating_point() and not state_dict[k].is_floating_point()]
    if not_float:
        raise ValueError(f"{source}: expected floating-point weights, but these tensors are not: "
                         f"{', '.join(not_float)}; refusing to cast them")


def _check_finite_weights(source: str, state_dict: Mapping[str, Tensor], keys: list[str]) -> None:
    """Refuse NaN or infinite values in the float tensors that would be loaded (meta tensors hold no values)."""
    bad = non_finite_names({k: state_dict[k] for k in keys})
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}), the weights of a run "
                         "that diverged; refusing to load them (pass allow_non_finite=True to load them anyway)")


def _allowed_missing(missing: list[str], unexpected: list[str], expected: Mapping[str, Tensor],
                     notes: list[str]) -> set[str]:
    """The missing keys a non-strict load accepts, each kind with a note saying what it means."""
    allowed: set[str] = set()
    decoder_missing = [k for k in missing if is_decoder_key(k)]
    if decoder_missing and len(decoder_missing) == sum(is_decoder_key(k) for k in expected):
        allowed |= set(decoder_missing)
        notes.append(
            "decoder left at initialisation: this file is encoder-only, reconstructions will be meaningless until "
            "the decoder is trained"
        )
    if any(k.startswith("fc_norm.") for k in unexpected):
        allowed |= {k for k in missing if k.startswith("norm.")}
        notes.append("fine-tuned file: it carries fc_norm/head instead of norm; the encoder's final norm stays at "
                     "initialisation and fc_norm/head are skipped")
    absent_tables = [k for k in _TABLES if k in missing and k not in allowed]
    if absent_tables:
        # The tables are fixed functions of the grid, so a file that left them out loses nothing.
        allowed |= set(absent_tables)
        notes.append(f"{absent_tables} not in the file: the fixed sin-cos tables built with the model are used")
    return allowed


def load_checkpoint(
    model: MaskedAutoEncoder, source: str | os.PathLike | Mapping[str, Any] | Checkpoint, *, strict: bool = False,
    allow_non_finite: bool = False,
) -> LoadReport:
    """Load weights into an existing model and report what was loaded (see the module docstring for the policy).

    Args:
        model: the ``MaskedAutoEncoder`` to fill (its config decides the shapes; tables are adapted to it).
        source: a path, a state dict, or a ``Checkpoint`` from ``read_checkpoint``.
        strict: require every model key and use every file key.
        allow_non_finite: load weights holding NaN or infinity instead of refusing them.

    Raises:
        ValueError: missing/unexpected keys (listed by name), shape mismatches (both shapes shown), non-float
            tensors where the model holds float weights, or non-finite weights (unless ``allow_non_finite``).
    """
    if not isinstance(model, MaskedAutoEncoder):
        raise TypeError(f"model must be a MaskedAutoEncoder, got {type(model).__name__}")
    strict = check_bool(strict, "strict")  # the string "false" would count as true
    allow_non_finite = check_bool(allow_non_finite, "allow_non_finite")
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    state_dict = dict(ckpt.state_dict)
    notes = list(ckpt.notes)
    expected = model.state_dict()
    for name in _TABLES:
        if name in state_dict and name in expected:
            src_grid = source_grid(state_dict[name], ckpt.config)
            state_dict[name], note = adapt_pos_embed(state_dict[name], src_grid, model.config.grid_size, name)
            notes += [note] if note else []

    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    _check_tensors(ckpt.source, state_dict, expected)
    allowed_missing = _allowed_missing(missing, unexpected, expected, notes)
    allowed_unexpected = {k for k in unexpected if k.startswith(_FINETUNE_HEAD)}
    bad_missing = [k for k in missing if strict or k not in allowed_missing]
    # Source keys that no conversion could place (ckpt.skipped) mean a file of another kind: always an error.
    bad_unexpected = [k for k in unexpected if strict or k not in allowed_unexpected] + ckpt.skipped
    if bad_missing or bad_unexpected:
        raise ValueError(
            f"{ckpt.source} does not fit the model ({'strict' if strict else 'non-strict'} load): "
            f"missing keys {bad_missing}; unexpected keys {bad_unexpected}"
        )
    if not allow_non_finite:
        _check_finite_weights(ckpt.source, state_dict, [k for k in expected if k in state_dict])
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
    allow_non_finite: bool = False,
    **overrides: Any,
) -> tuple[MaskedAutoEncoder, LoadReport]:
    """Build the model a checkpoint describes and load it.

    The config comes from the checkpoint's config file, else from the tensor shapes (``infer_config``);
    ``overrides`` (any ``MAEConfig`` field: img_size, norm_pix_loss, mask_ratio, ...) win. A different
    ``img_size`` adapts the position tables. The config is checked against the tensors before the model is built,
    so a small file cannot make it allocate a large model.

    Returns:
        ``(model, report)``; ``print(report)`` says what was loaded and what stays at initialisation.
    """
    strict = check_bool(strict, "strict")
    allow_non_finite = check_bool(allow_non_finite, "allow_non_finite")
    ckpt = read_checkpoint(source)
    if ckpt.config is not None:
        config = MAEConfig(**{**ckpt.config, **overrides})
        notes = []
    else:
        config, notes = infer_config(ckpt.state_dict, **overrides)
    check_config_fits(config, ckpt.state_dict, ckpt.source)
    model = MaskedAutoEncoder.from_config(config, device=device, dtype=dtype)
    report = load_checkpoint(model, ckpt, strict=strict, allow_non_finite=allow_non_finite)
    report.notes[:0] = notes
    return model, report


def from_pretrained(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = False,
    allow_non_finite: bool = False,
    **overrides: Any,
) -> MaskedAutoEncoder:
    """Build the model a checkpoint describes and load its weights; warn with the report if the load was partial.

    Reads official release files, directories from ``save_pretrained`` or the trainer, Hugging Face ViTMAE
    directories, and state dicts; pickled files only through ``torch.load(weights_only=True)``. The config comes from
    the checkpoint (its config file, else its tensor shapes); ``overrides`` (``MAEConfig`` fields) win. Weights
    holding NaN or infinity are refused, naming them, unless ``allow_non_finite=True``.
    ``load_pretrained`` takes the same arguments and also returns the ``LoadReport``.
    """
    model, report = load_pretrained(source, device=device, dtype=dtype, strict=strict,
                                    allow_non_finite=allow_non_finite, **overrides)
    report.warn_if_partial(stacklevel=3)
    return model
