"""Argument checks shared by every public entry point. Imports nothing of ``mae``: the leaf of the import graph.

Each check names the argument, the value it received and what was expected, and returns the value in its canonical
form (a pair, a float, an int), so callers write ``ph, pw = to_pair(patch_size, "patch_size")``.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "available_bytes",
    "check_bool",
    "check_device",
    "check_divisible",
    "check_dtype",
    "check_finite",
    "check_fits",
    "check_generator",
    "check_images",
    "check_indices",
    "check_int",
    "check_mask",
    "check_mask_args",
    "check_mask_ratio",
    "check_non_negative_int",
    "check_positive_int",
    "check_regular_file",
    "check_shaped",
    "check_str",
    "check_tensor",
    "special_file_kind",
    "to_pair",
]


def _is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools (``True`` is an int in Python, never a size here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def to_pair(value: Any, name: str) -> tuple[int, int]:
    """``(h, w)`` from a positive int or a pair of positive ints."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """An int (NumPy integers accepted; bools and floats refused), optionally with ``low <= value <= high``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    """A positive int (NumPy integers accepted; bools and floats refused)."""
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """A real boolean: the strings "false" or "0" are truthy in Python, so they are refused, not guessed."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_finite(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite real number, optionally with ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return value


def check_mask_ratio(mask_ratio: Any, name: str = "mask_ratio") -> float:
    """A mask ratio: a real number in [0, 1) (NumPy floats accepted)."""
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {mask_ratio!r}")
    if not 0.0 <= float(mask_ratio) < 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1), got {mask_ratio!r}")
    return float(mask_ratio)


def check_divisible(img_size: tuple[int, int], patch_size: tuple[int, int], name: str = "img_size") -> None:
    """The patch grid must tile the image exactly (dinov2's wording: say which side and by how much)."""
    (H, W), (ph, pw) = img_size, patch_size
    if H % ph or W % pw:
        raise ValueError(
            f"{name} (H, W) = ({H}, {W}) is not a multiple of patch_size ({ph}, {pw}): "
            f"height {H} % {ph} = {H % ph}, width {W} % {pw} = {W % pw}"
        )


def check_non_negative_int(value: Any, name: str) -> int:
    """An int >= 0 (NumPy integers accepted; bools and floats refused)."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def check_str(value: Any, name: str) -> str:
    """A string (NumPy strings accepted)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {value!r} ({type(value).__name__})")
    return str(value)


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is a FIFO, a device or a socket (links followed), else None.

    Opening such a file may block forever (a FIFO waits for a writer) or never end (``/dev/zero``), so every path
    argument is looked at with ``os.stat`` before it is opened.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, a broken link, a NUL in the name: the caller's open says so
        return None
    return next((kind for is_kind, kind in _SPECIAL_KINDS if is_kind(mode)), None)


def check_regular_file(path: str | os.PathLike, name: str) -> None:
    """Refuse a FIFO, device or socket given where a file is read (see ``special_file_kind``)."""
    kind = special_file_kind(path)
    if kind is not None:
        raise ValueError(f"{name} {str(path)!r} is {kind}, not a regular file; expected a file on disk")


def check_tensor(value: Any, name: str, shape: str, ndim: int | None = None) -> Tensor:
    """A torch.Tensor, with ``ndim`` dimensions if given; ``shape`` names them for the message, e.g. "(B, L)"."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(value).__name__}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(value.shape)}")
    return value


def check_shaped(value: Any, name: str, shape: tuple[int, ...], device: torch.device, dims: str, ref: str) -> Tensor:
    """A tensor of exactly ``shape`` on ``device``, those of the argument ``ref``; ``dims`` names the dimensions for
    the message, e.g. "(B, L)"."""
    check_tensor(value, name, f"{dims} = {tuple(shape)}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {dims} = {tuple(shape)} to match {ref}, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but {ref} is on {device}; move it with .to()")
    return value


def check_generator(generator: Any, name: str = "generator") -> torch.Generator | None:
    """None or a ``torch.Generator`` (a seed int is refused: ``torch.Generator().manual_seed(seed)`` makes one)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None (e.g. torch.Generator().manual_seed(0)), got "
                        f"{generator!r} ({type(generator).__name__})")
    return generator


def check_device(device: Any, name: str = "device") -> torch.device | None:
    """None or a device torch knows and can allocate on here ('cpu', 'cuda:0', 'meta', a torch.device, ...)."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"{name} must be a str, an int or a torch.device, got {device!r} ({type(device).__name__})")
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)  # allocates nothing; fails for unknown names and devices this machine lacks
    except (RuntimeError, AssertionError, NotImplementedError) as err:
        raise ValueError(f"{name} {device!r} cannot be used here: {str(err).splitlines()[0]}") from None
    return dev


def check_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    """None or a floating-point torch.dtype (the string "float16" is refused: pass torch.float16)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating-point torch.dtype such as torch.bfloat16, got {dtype!r}")
    return dtype


def available_bytes(device: torch.device | None) -> int | None:
    """Memory free for new tensors on ``device`` (host RAM for the CPU), or None where it cannot be told."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    if dev.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    try:  # a container's cgroup (v2) limit, which /proc/meminfo does not show
        with open("/sys/fs/cgroup/memory.max") as f_max, open("/sys/fs/cgroup/memory.current") as f_cur:
            limit = f_max.read().strip()
            if limit != "max":
                room = int(limit) - int(f_cur.read())
                free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free


def check_fits(nbytes: int, what: str, device: torch.device | None) -> None:
    """Refuse, before allocating, ``nbytes`` that the device's free memory cannot hold (never on 'meta')."""
    if device is not None and torch.device(device).type == "meta":
        return
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise ValueError(f"{what} needs {nbytes / 2**30:.3g} GiB but only {free / 2**30:.3g} GiB is free on "
                         f"{device or 'cpu'}; choose smaller sizes")


def check_images(imgs: Any, in_chans: int, img_size: tuple[int, int], device: torch.device, dtype: torch.dtype,
                 name: str = "imgs") -> Tensor:
    """A model's input batch: floating (B, C, H, W), B >= 1, with the model's channels, size, device and dtype."""
    check_tensor(imgs, name, "(B, C, H, W)")
    if not imgs.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {imgs.dtype}; "
            "convert integer images first, e.g. imgs.float() / 255 followed by normalisation"
        )
    if imgs.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions (B, C, H, W), got {imgs.ndim} with shape {tuple(imgs.shape)}")
    B, C, H, W = imgs.shape
    if B == 0:
        raise ValueError(f"{name} holds no image (batch size 0); pass at least one image")
    if C != in_chans:
        raise ValueError(f"{name} has {C} channels but the model expects in_chans={in_chans}")
    if (H, W) != tuple(img_size):
        raise ValueError(
            f"{name} has size (H, W) = ({H}, {W}) but the model expects img_size={tuple(img_size)}; "
            "resize the images or build the model with that img_size"
        )
    if imgs.device != device:
        raise ValueError(f"{name} is on {imgs.device} but the model is on {device}; move it with .to()")
    if imgs.dtype != dtype and not torch.is_autocast_enabled(imgs.device.type):
        raise TypeError(
            f"{name} has dtype {imgs.dtype} but the model's parameters are {dtype}; convert the images with "
            f"{name}.to({dtype}) or run under torch.autocast"
        )
    return imgs


def check_indices(ids: Tensor, name: str, n: int, device: torch.device) -> Tensor:
    """Integer positions into a sequence of ``n`` on ``device``, for gathers. Their values are read (in [0, n)) on the
    CPU only, where that costs no device sync; on an accelerator an out-of-range index trips torch's own assert."""
    if ids.dtype != torch.int64:
        raise TypeError(f"{name} must hold int64 positions (torch.long), got dtype {ids.dtype}")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but the model is on {device}; move it with .to()")
    if ids.device.type == "cpu" and not torch.compiler.is_compiling() and ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= n:
            raise ValueError(f"{name} must hold positions in [0, {n}), got values from {low} to {high}")
    return ids


def check_mask_args(batch_size: Any, grid_size: Any, mask_ratio: Any, generator: Any,
                    device: Any) -> tuple[int, tuple[int, int], float, torch.device | None]:
    """The arguments every masking strategy takes, checked, with its (B, L) masks bounded before they are allocated.
    Returns ``(B, (gh, gw), mask_ratio, device)``."""
    B, (gh, gw) = check_positive_int(batch_size, "batch_size"), to_pair(grid_size, "grid_size")
    device, _ = check_device(device), check_generator(generator)
    check_fits(8 * B * gh * gw, f"masks for batch_size {B} and grid_size ({gh}, {gw})", device)  # bool/int + float32
    return B, (gh, gw), check_mask_ratio(mask_ratio), device


def check_mask(mask: Any, batch_size: int | None = None, num_patches: int | None = None) -> int:
    """Check a user mask, (B, L) of 0/1 (1 = removed) with the same count removed in every row; return L - K."""
    check_tensor(mask, "mask", "(B, L)")
    batch_size, num_patches = (None if v is None else check_positive_int(v, n)
                               for v, n in ((batch_size, "batch_size"), (num_patches, "num_patches")))
    if mask.device.type == "meta":
        raise ValueError("mask is on the meta device: it holds no values to check; pass a real (B, L) mask")
    if mask.ndim != 2 or (batch_size or mask.shape[0], num_patches or mask.shape[1]) != tuple(mask.shape):
        raise ValueError(f"mask must be (B, L) = ({batch_size or 'B'}, {num_patches or 'L'}), got {tuple(mask.shape)} "
                         f"(batch_size={batch_size}, num_patches={num_patches})")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 (kept) and 1 (removed)")
    counts = (mask != 0).sum(dim=1).unique()  # the distinct per-row counts of removed patches
    if counts.numel() > 1:
        raise ValueError(f"every row of mask must remove the same number of patches (batches stay rectangular), got "
                         f"rows removing {counts.tolist()}")
    return int(counts[0]) if counts.numel() else 0
