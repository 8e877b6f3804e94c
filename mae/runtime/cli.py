"""Every command of the package is a config dataclass turned into flags, and ends the same way.

Config to command line: each field of a command's frozen dataclass is one flag (``batch_size`` -> ``--batch-size``).
Its help text and choices live in the field's metadata (``option``), its type comes from its type hint, and a bool
becomes ``--flag/--no-flag``. Defaults are suppressed, so the parsed namespace holds only what was typed: on
``--resume`` those override the saved run's settings. ``CommandConfig`` gives every config the same ``to_dict``,
``from_dict`` and ``replace``.

How a command ends (``run_command``): one line on stderr and an exit code, never a traceback for a known failure.

    2    bad input (a value, a type, a missing file or package): nothing was run that needs undoing
    1    the run stopped: the loss became non-finite (``FloatingPointError``), or the system refused (a full disk, a
         read-only folder)
    130  interrupted (Ctrl-C)
    143  stopped by SIGTERM or SIGUSR1 after saving where it was (``Preempted``; mae.runtime.preemption)

After a stop the line ends with how to go on (``next_step``), which the command knows: resume only where a
checkpoint exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import sys
import typing
from collections.abc import Callable, Iterable
from typing import Any

from ..config import replace_fields
from .preemption import PREEMPTED_EXIT, Preempted

__all__ = ["CommandConfig", "MissingExtraError", "absolute_paths", "build_parser", "option", "parsed_fields",
           "require_extra", "run_command", "slug"]


def option(default: Any, help: str, **extra: Any) -> Any:  # noqa: A002 (argparse's word)
    """A config field with its command-line help text; ``extra`` goes to the metadata too (e.g. ``choices``)."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


class CommandConfig:
    """What every command's frozen config dataclass shares: plain-dict round trips and validated copies."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Rebuild from ``to_dict`` output (keys this version does not know are ignored)."""
        valid = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in valid})

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (unknown names refused, validated again)."""
        return replace_fields(self, **changes)

    @classmethod
    def default_text(cls, field: dataclasses.Field) -> str:
        """How ``--help`` states a field's default (configs whose defaults depend on the data override this)."""
        return str(field.default)


class MissingExtraError(ImportError):
    """A package of an optional extra (``pip install 'mae-pytorch[EXTRA]'``) cannot be imported."""


def require_extra(extra: str, packages: dict[str, str], what: str) -> None:
    """Raise ``MissingExtraError`` naming what ``what`` needs and how to install it, if any of ``packages`` (import
    name -> distribution name) fails to import: one line instead of a traceback naming the first missing package."""
    missing = []
    for module, distribution in packages.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    if missing:
        raise MissingExtraError(f"{what} needs the {extra} extra ({', '.join(missing)} could not be imported): "
                                f"pip install 'mae-pytorch[{extra}]'")


def absolute_paths(spec: str | None) -> str | None:
    """A path, or several joined by '::', made absolute (symlinks resolved) once, when a run's settings are made:
    the run's recipe then names the same files from any working directory, and one file given by two paths is one
    recipe. URLs and None are left as they are."""
    if spec is None:
        return None
    return "::".join(part if not part or "://" in part else os.path.realpath(os.path.expanduser(part))
                     for part in str(spec).split("::"))


def slug(text: str, fallback: str) -> str:
    """The last component of a path or name, reduced to characters safe in a folder name."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", re.split(r"[/\\]", str(text).rstrip("/\\"))[-1])
    return base.strip("._") or fallback


def _value_type(hint: Any) -> Any:
    """The value type of a field's hint, without the ``None`` of ``int | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if args else hint
    return typing.get_origin(kind) or kind


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. depth=6), got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value  # a bare string


def build_parser(config_cls: type, *, prog: str, description: str, epilog: str | None = None,
                 skip: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The parser of a command whose every flag is a field of ``config_cls`` (a ``CommandConfig`` dataclass).

    A ``dict`` field becomes a repeatable ``--<name without s> KEY=VALUE`` (values are JSON). Fields in ``skip``
    get no flag.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if field.name in skip:
            continue
        flag, kind = "--" + field.name.replace("_", "-"), _value_type(hints[field.name])
        help_text = f"{field.metadata['help']} (default: {config_cls.default_text(field)})"
        if kind is dict:
            parser.add_argument(flag.removesuffix("s"), dest=field.name, action="append", type=_key_value,
                                metavar="KEY=VALUE", help=help_text)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            choices = field.metadata.get("choices")
            parser.add_argument(flag, type=kind, choices=choices, help=help_text,
                                metavar=None if choices else field.name.upper())
    return parser


def parsed_fields(namespace: argparse.Namespace) -> dict[str, Any]:
    """The typed flags as config fields (repeated KEY=VALUE flags as one dict)."""
    args = vars(namespace)
    return {k: dict(v) if isinstance(v, list) and v and isinstance(v[0], tuple) else v for k, v in args.items()}


def _message(err: BaseException) -> str:
    """An error's own message; one raised in a data-loader worker reaches the main process wrapped in torch's
    "Caught ... in DataLoader worker process N" with the worker's traceback: keep only its last line, the message."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def run_command(prog: str, body: Callable[[], object], next_step: Callable[[], str]) -> int:
    """Run ``body()`` for the command ``prog``; returns its exit code (0 when it returned)."""
    try:
        body()
        return 0
    except (ValueError, TypeError, ImportError) as err:
        line, code = f"error: {_message(err)}", 2
    except FloatingPointError as err:
        line, code = f"stopped: {_message(err)}", 1
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        line, code = f"error: {where}{err.strerror or _message(err)}", 1
        if isinstance(err, FileNotFoundError):  # an input that is not there: bad input, nothing to resume
            code = 2
        else:
            line += f"; {next_step()}"
    except Preempted as err:
        line, code = f"stopped: {err}", PREEMPTED_EXIT
    except KeyboardInterrupt:
        line, code = f"interrupted; {next_step()}", 130
    # One write, so that the processes of a multi-process run that all fail print whole lines (print() writes the
    # newline separately, and their lines ran into each other).
    sys.stderr.write(f"{prog}: {line}\n")
    sys.stderr.flush()
    return code
