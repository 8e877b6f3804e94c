"""Atomic writes: a reader (or a crash) never sees a half-written file or folder.

One helper, ``atomic_write``, serves every writer of the project (weights folders, JSON files, the trainer's
checkpoints, figures). The new content is written under a temporary name in the same folder (so the final rename stays
on one filesystem), flushed to disk (fsync), then renamed over the target with ``os.replace``; on any error the
temporary is removed and the target is left as it was. Files are created with mode 0o666 filtered by the umask, like
``open(path, "w")``, not ``tempfile``'s private 0o600.

Temporary names end in ``TEMP_SUFFIX``, so a later run can recognise (and remove, ``remove_temporaries``) what a
killed process of ours left behind, and nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TEMP_SUFFIX", "atomic_write", "fsync_path", "recover_directory", "remove_temporaries", "write_json"]

TEMP_SUFFIX = ".mae-tmp"
_OLD = ".old"  # a folder moved aside while its replacement is renamed in


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries (POSIX), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(final: Path) -> Path:
    return final.parent / f".{final.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _create_temp(final: Path, is_dir: bool) -> Path:
    while True:
        tmp = _temp_path(final)
        try:
            if is_dir:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *, is_dir: bool = False) -> Path:
    """Create or replace ``path`` atomically; ``write(tmp)`` fills the temporary file (or folder, ``is_dir``).

    A folder is swapped in by two renames (the old one aside, the new one in); a crash between them leaves the old
    folder at ``.<name>.old``, which ``recover_directory(path)`` puts back.

    Args:
        path: the file or folder to create or replace; its parent is created if needed.
        write: called once with the temporary path; it writes there (e.g. ``torch.save(obj, tmp)``).
        is_dir: ``path`` is a folder: ``write`` fills an empty temporary folder.

    Returns:
        ``path`` as a ``Path``.
    """
    final = Path(path).expanduser()
    if final.exists() and final.is_dir() != is_dir:
        kind, expected = ("folder", "a file") if final.is_dir() else ("file", "a folder")
        raise ValueError(f"path {str(final)!r} exists and is a {kind}, expected {expected}")
    for parent in final.parents:  # mkdir would fail with a bare OSError below a file
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"path {str(final)!r} lies below {str(parent)!r}, which is a file, not a folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        recover_directory(final)
    tmp = _create_temp(final, is_dir)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 (0o777 for a folder) less the umask
    try:
        write(tmp)
        if stat.S_IMODE(tmp.stat().st_mode) != mode:
            os.chmod(tmp, mode)  # writers that recreate the file (safetensors: 0o600) get the usual mode back
        if is_dir:
            for item in sorted(tmp.rglob("*")):
                if item.is_file():
                    fsync_path(item)
        fsync_path(tmp)
        if is_dir:
            _swap_directory(tmp, final)
        else:
            os.replace(tmp, final)
        fsync_path(final.parent)
    except BaseException:
        _remove(tmp)
        raise
    return final


def _swap_directory(tmp: Path, final: Path) -> None:
    old = final.parent / f".{final.name}{_OLD}"
    _remove(old)
    if final.exists():
        os.replace(final, old)  # a folder cannot be renamed onto a non-empty one: move the old one aside first
    os.replace(tmp, final)
    _remove(old)


def recover_directory(path: str | os.PathLike) -> None:
    """Undo a crash between the two renames of a folder swap: put the previous folder back."""
    final = Path(path)
    old = final.parent / f".{final.name}{_OLD}"
    if old.is_dir() and not final.exists():
        os.replace(old, final)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted ``atomic_write`` left in ``folder`` (our temporary names only); return them.

    Folders moved aside by an interrupted swap are first put back (``recover_directory``) when their target is gone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for old in folder.glob(f".*{_OLD}"):
        recover_directory(old.parent / old.name[1 : -len(_OLD)])
    removed = [p for p in folder.glob(f".*{TEMP_SUFFIX}")]
    removed += [p for p in folder.glob(f".*{_OLD}") if (folder / p.name[1 : -len(_OLD)]).exists()]
    for p in removed:
        _remove(p)
    return removed


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
