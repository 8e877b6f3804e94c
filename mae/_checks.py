"""Argument checks shared by every public entry point. Imports nothing of ``mae``: the leaf of the import graph.

Each check names the argument, the value it received and what was expected, and returns the value in its canonical
form (a pair, a float, an int), so callers write ``ph, pw = to_pair(patch_size, "patch_size")``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = [
    "check_bool",
    "check_divisible",
    "check_finite",
    "check_mask_ratio",
    "check_non_negative_int",
    "check_positive_int",
    "to_pair",
]


def _is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools (``True`` is an int in Python, never a size here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


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


def check_positive_int(value: Any, name: str) -> int:
    """A positive int (NumPy integers accepted; bools and floats refused)."""
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """A real boolean: the strings "false" or "0" are truthy in Python, so they are refused, not guessed."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
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


def check_divisible(img_size: tuple[int, int], patch_size: tuple[int, int]) -> None:
    """The patch grid must tile the image exactly (dinov2's wording: say which side and by how much)."""
    (H, W), (ph, pw) = img_size, patch_size
    if H % ph or W % pw:
        raise ValueError(
            f"image size (H, W) = ({H}, {W}) is not a multiple of patch size ({ph}, {pw}): "
            f"height {H} % {ph} = {H % ph}, width {W} % {pw} = {W % pw}"
        )


def check_non_negative_int(value: Any, name: str) -> int:
    """An int >= 0 (NumPy integers accepted; bools and floats refused)."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)
