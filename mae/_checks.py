"""Argument checks shared by every public entry point. Imports nothing of ``mae``: the leaf of the import graph.

Each check names the argument, the value it received and what was expected, and returns the value in its canonical
form (a pair, a float, an int), so callers write ``ph, pw = to_pair(patch_size, "patch_size")``.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "available_bytes", "check_bool", "check_decoder_inputs", "check_device", "check_divisible", "check_dtype",
    "check_finite", "check_fits", "check_generator", "check_grid_mask_args", "check_images", "check_indices",
    "check_int", "check_loss_inputs", "check_mask", "check_mask_args", "check_mask_ratio", "check_masking",
    "check_masking_args", "check_model_fits", "check_mse_args", "check_noise", "check_non_negative_int",
    "check_patches", "check_pos_embed_args", "check_positive_int", "check_regular_file", "check_removes_some",
    "check_shaped", "check_str", "check_tensor", "check_unpatchify_args", "special_file_kind", "to_pair",
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


def non_finite_names(tensors: Mapping[str, Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinity (meta tensors hold no values), in order.
    All finite, the usual case, costs one device sync rather than one per tensor."""
    floats = {k: v for k, v in tensors.items() if v.is_floating_point() and v.device.type != "meta"}
    flags = [v.isfinite().all() for v in floats.values()]
    if len({f.device for f in flags}) <= 1 and bool(torch.stack(flags).all() if flags else True):
        return []
    return [k for k, flag in zip(floats, flags, strict=True) if not bool(flag)]


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


def check_model_fits(device_bytes: int, host_bytes: int, what: str, device: torch.device | None) -> None:
    """Refuse a model too big for the free memory before allocating it, reading each device's free memory once."""
    on_host = device is None or device.type == "cpu"
    check_fits(host_bytes + device_bytes * on_host, what, None)
    if not on_host:
        check_fits(device_bytes, what, device)


def check_images(imgs: Any, in_chans: int, img_size: tuple[int, int], device: torch.device, dtype: torch.dtype,
                 name: str = "imgs") -> Tensor:
    """A model's input batch: floating (B, C, H, W), B >= 1, with the model's channels, size, device and dtype."""
    check_tensor(imgs, name, "(B, C, H, W)")
    if not imgs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {imgs.dtype}; convert integer images "
                        "first, e.g. imgs.float() / 255 followed by normalisation")
    if imgs.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions (B, C, H, W), got {imgs.ndim} with shape {tuple(imgs.shape)}")
    B, C, H, W = imgs.shape
    if B == 0:
        raise ValueError(f"{name} holds no image (batch size 0); pass at least one image")
    if C != in_chans:
        raise ValueError(f"{name} has {C} channels but the model expects in_chans={in_chans}")
    if (H, W) != tuple(img_size):
        raise ValueError(f"{name} has size (H, W) = ({H}, {W}) but the model expects img_size={tuple(img_size)}; "
                         "resize the images or build the model with that img_size")
    if imgs.device != device:
        raise ValueError(f"{name} is on {imgs.device} but the model is on {device}; move it with .to()")
    if imgs.dtype != dtype and not torch.is_autocast_enabled(imgs.device.type):
        raise TypeError(
            f"{name} has dtype {imgs.dtype} but the model's parameters are {dtype}; convert the images with "
            f"{name}.to({dtype}) or run under torch.autocast"
        )
    return imgs


def check_indices(ids: Tensor, name: str, n: int, device: torch.device) -> Tensor:
    """int64 positions in [0, n) on ``device``; the values are read on the CPU only (no device sync)."""
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
    """Every masking strategy's arguments, its masks bounded by the free memory: ``(B, (gh, gw), ratio, device)``."""
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


def check_noise(noise: Any, generator: Any, shape: tuple[int, int], device: torch.device, ref: str) -> None:
    """A ``generator`` and ``noise``: None or a real (B, L) tensor of ``shape`` on ``device``, those of ``ref``,
    finite (NaN has no rank). Its values are read on the CPU only, where that costs no device sync."""
    check_generator(generator)
    if noise is not None and (check_shaped(noise, "noise", shape, device, "(B, L)", ref).is_complex()
                              or noise.dtype == torch.bool):
        raise TypeError(f"noise must be a real tensor ranking the patches (small = keep), got dtype {noise.dtype}")
    if (noise is not None and noise.device.type == "cpu" and not torch.compiler.is_compiling()
            and not bool(torch.isfinite(noise).all())):
        raise ValueError("noise holds NaN or infinite values, which rank no patch; pass finite noise (small = keep)")


def check_masking_args(mask_ratio: Any, noise: Any, generator: Any, masking: Any, mask: Any, *,
                       shape: tuple[int, int], device: torch.device, training: bool) -> tuple[float | None, int]:
    """A model call's masking arguments, for (B, L) = ``shape`` patches on ``device``. Returns ``(mask_ratio,
    removed)``: the ratio (None: the model's default) and the patches a user ``mask`` removes per row (else 0)."""
    check_noise(noise, generator, shape, device, "imgs")
    if mask is None:
        return (None if mask_ratio is None else check_mask_ratio(mask_ratio)), 0
    if noise is not None or masking is not None or mask_ratio is not None:
        raise ValueError("pass mask alone: it already fixes which patches are removed (and so the ratio)")
    if check_tensor(mask, "mask", "(B, L)").device != device:
        raise ValueError(f"mask is on {mask.device} but the model is on {device}; move it with .to()")
    removed = check_mask(mask, *shape)
    if removed == shape[1]:
        raise ValueError(f"mask removes all {removed} patches of every image: it keeps no patch to encode")
    if training:
        check_removes_some(mask)
    return None, removed


def check_removes_some(mask: Tensor) -> None:
    """The loss averages over removed patches (0 / 0 without one); skipped under torch.compile and on 'meta'."""
    if not torch.compiler.is_compiling() and mask.device.type != "meta" and not bool((mask != 0).any()):
        raise ValueError("mask has no removed patch (all zeros): the MAE loss is defined on removed patches only; "
                         "use mask_ratio > 0")


def check_patches(patches: Any, batch_size: int, num_patches: int, device: torch.device) -> Tensor:
    """Patch indices (B, M), M <= L, int64 positions in [0, L) on ``device``."""
    if check_tensor(patches, "patches", "(B, M)", ndim=2).shape[0] != batch_size or patches.shape[1] > num_patches:
        raise ValueError(f"patches must be (B, M), B = {batch_size}, M <= {num_patches}, got {tuple(patches.shape)}")
    return check_indices(patches, "patches", num_patches, device)


def check_decoder_inputs(latent: Any, ids_restore: Any, patches: Any, embed_dim: int, num_patches: int) -> None:
    """A decoder's inputs: latent (B, 1+K, D) with K <= L, ids_restore (B, L) and optional patches (B, M)."""
    D, L = embed_dim, num_patches
    check_tensor(latent, "latent", f"(B, 1+K, {D})")
    if latent.ndim != 3 or latent.shape[-1] != D or latent.shape[1] < 1:
        raise ValueError(f"latent must be (B, 1+K, {D}), got shape {tuple(latent.shape)}")
    B, N, _ = latent.shape
    if tuple(check_tensor(ids_restore, "ids_restore", f"(B, L) = ({B}, {L})").shape) != (B, L) or N - 1 > L:
        raise ValueError(f"ids_restore must be (B, L) = ({B}, {L}) with at most L kept tokens in latent, got "
                         f"ids_restore {tuple(ids_restore.shape)} and latent {tuple(latent.shape)}")
    check_indices(ids_restore, "ids_restore", L, latent.device)
    if patches is not None:
        check_patches(patches, B, L, latent.device)


def check_loss_inputs(pred: Any, mask: Any, patches: Any, shape: tuple[int, int, int], device: torch.device) -> None:
    """For images that patchify to ``shape`` (B, L, P): pred (B, L or M, P), mask (B, L), patches (B, M) or None."""
    B, L, P = shape
    check_shaped(mask, "mask", (B, L), device, "(B, L)", "imgs")
    if patches is not None:
        mask = mask.gather(1, check_patches(patches, B, L, device))  # (B, M)
    if not check_shaped(pred, "pred", (B, mask.shape[1], P), device, "(B, L, P)", "imgs").is_floating_point():
        raise TypeError(f"pred must be a floating-point tensor, got dtype {pred.dtype}")
    check_removes_some(mask)


def check_mse_args(pred: Any, target: Any, mask: Any, norm_pix_loss: Any) -> bool:
    """Floating pred and target (B, L, P), mask (B, L) removing a patch, on one device; returns norm_pix_loss."""
    check_tensor(pred, "pred", "(B, L, P)", ndim=3)
    check_shaped(target, "target", pred.shape, pred.device, "(B, L, P)", "pred")
    check_shaped(mask, "mask", pred.shape[:2], pred.device, "(B, L)", "pred")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise TypeError(f"pred and target must be floating-point tensors, got {pred.dtype} and {target.dtype}")
    check_removes_some(mask)
    return check_bool(norm_pix_loss, "norm_pix_loss")


def check_unpatchify_args(x: Any, patch_size: Any, grid_size: Any, in_chans: Any) -> tuple[tuple, tuple, int]:
    """x (B, gh * gw, ph * pw * C). Returns ``((ph, pw), (gh, gw), C)``."""
    (ph, pw), (gh, gw) = to_pair(patch_size, "patch_size"), to_pair(grid_size, "grid_size")
    C = check_positive_int(in_chans, "in_chans")
    if check_tensor(x, "x", "(B, L, P)").ndim != 3 or x.shape[1] != gh * gw or x.shape[2] != ph * pw * C:
        raise ValueError(f"x must be (B, {gh * gw}, {ph * pw * C}) for grid_size ({gh}, {gw}), patch_size ({ph}, {pw}) "
                         f"and in_chans {C}, got shape {tuple(x.shape)}")
    return (ph, pw), (gh, gw), C


def check_pos_embed_args(embed_dim: Any, grid_size: Any, cls_token: Any) -> tuple[int, tuple[int, int], bool]:
    """A sin-cos table's arguments (D divisible by 4), its float64 scratch bounded by the free host memory."""
    embed_dim, cls_token = check_positive_int(embed_dim, "embed_dim"), check_bool(cls_token, "cls_token")
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for a 2-D sin-cos table, got {embed_dim}")
    gh, gw = to_pair(grid_size, "grid_size")
    check_fits(3 * 8 * (1 + gh * gw) * embed_dim, f"a sin-cos table of grid_size {(gh, gw)}, embed_dim {embed_dim}",
               None)  # float64 scratch + the float32 copy
    return embed_dim, (gh, gw), cls_token


def check_masking(masking: Any, choices: tuple[str, ...], mask_ratio: float, grid_size: tuple[int, int]) -> str:
    """A masking strategy among ``choices`` that can serve ``mask_ratio`` (checked already) on a ``grid_size`` grid;
    grid masking keeps one patch of every 2x2 cell, so it needs ratio 0.75 and an even grid."""
    if not isinstance(masking, str) or masking not in choices:
        raise ValueError(f"masking must be one of {list(choices)}, got {masking!r}")
    if masking == "grid" and mask_ratio != 0.75:
        raise ValueError(f"grid masking keeps one patch of every 2x2 cell, i.e. mask_ratio 0.75: mask_ratio must be "
                         f"0.75, got {mask_ratio!r}")
    if masking == "grid" and (grid_size[0] % 2 or grid_size[1] % 2):
        raise ValueError(f"grid masking needs an even patch grid to tile with 2x2 cells, got grid_size {grid_size}")
    return masking


def check_grid_mask_args(batch_size: Any, grid_size: Any, mask_ratio: Any, offset: Any, generator: Any,
                         device: Any) -> tuple[int, tuple[int, int], tuple[int, int] | None, torch.device | None]:
    """``grid_mask``'s arguments. Returns ``(B, (gh, gw), offset, device)``."""
    B, grid_size, ratio, device = check_mask_args(batch_size, grid_size, mask_ratio, generator, device)
    check_masking("grid", ("grid",), ratio, grid_size)
    if offset is not None:
        if type(offset) not in (tuple, list) or list(offset) not in ([0, 0], [0, 1], [1, 0], [1, 1]):
            raise ValueError(f"offset must be a (row, column) pair of 0s and 1s, got {offset!r}")
        offset = tuple(check_int(v, "offset") for v in offset)  # 0.0 == 0 and True == 1, but not ints
    return B, grid_size, offset, device
