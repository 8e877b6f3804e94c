"""How every command of the package ends: one line on stderr and an exit code, never a traceback for a known failure.

    2    bad input (a value, a type, a missing file or package): nothing was run that needs undoing
    1    the run stopped: the loss became non-finite (``FloatingPointError``), or the system refused (a full disk, a
         read-only folder)
    130  interrupted (Ctrl-C)

After a stop the line ends with how to go on (``next_step``), which the command knows: resume only where a
checkpoint exists.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["run_command"]


def run_command(prog: str, body: Callable[[], object], next_step: Callable[[], str]) -> int:
    """Run ``body()`` for the command ``prog``; returns its exit code (0 when it returned)."""
    try:
        body()
        return 0
    except (ValueError, TypeError, ImportError) as err:
        line, code = f"error: {err}", 2
    except FloatingPointError as err:
        line, code = f"stopped: {err}", 1
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        line, code = f"error: {where}{err.strerror or err}", 1
        if isinstance(err, FileNotFoundError):  # an input that is not there: bad input, nothing to resume
            code = 2
        else:
            line += f"; {next_step()}"
    except KeyboardInterrupt:
        line, code = f"interrupted; {next_step()}", 130
    print(f"{prog}: {line}", file=sys.stderr)
    return code
