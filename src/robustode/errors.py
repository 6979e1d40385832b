"""One error type for everything a user can cause, and option names spelled for the caller.

Every error robustode raises because of its input — a bad value, a damaged or
crafted file, a folder in use or holding someone else's files, a model that
returns NaN — is a :class:`RobustodeError`. The command line turns those, and
only those, into one line and exit code 2; any other exception is a bug in
robustode and keeps its traceback.

The subclasses keep the built-in type a caller would catch without knowing
robustode (``InputError`` is a ``ValueError``, ``WriteError`` an ``OSError``,
``SolverError`` a ``RuntimeError``), so ``except ValueError`` keeps working.

A message that tells the user what to pass next names it the way the caller
spells it: ``overwrite=True`` through the Python API, ``--overwrite`` on the
command line (:func:`spell`; the CLI switches with :func:`command_line_spelling`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar


class RobustodeError(Exception):
    """Base of every error a user can cause and fix (bad input, damaged files, busy folders)."""


class InputError(RobustodeError, ValueError):
    """A value, option, file or folder robustode cannot take; the message says what it accepts."""


class FolderError(InputError):
    """An output folder that cannot be used: in use, holding other results or a user's files."""


class ResourceError(InputError):
    """Work far beyond what the input justifies (a model too large, a file too big to read)."""


class WriteError(RobustodeError, OSError):
    """A result could not be written (full or read-only disk); nothing already there was lost."""


# name -> (Python API spelling, command-line spelling)
_SPELLINGS: dict[str, tuple[str, str]] = {
    "overwrite": ("overwrite=True", "--overwrite"),
    "resume": ("resume=True", "--resume"),
    "out": ("out_dir=…", "--out DIR"),
    "run_dir": ("run_dir=…", "--run-dir DIR"),
    "checkpoint": ("checkpoint='epoch-N'", "--checkpoint epoch-N"),
    "data": ("data=", "--data"),
    "data_dir": ("data_dir=", "--data-dir"),
    "download": ("download=True", "--download"),
    "n": ("n=", "--n"),
    "max_parameters": ("max_parameters=", "--max-parameters"),
    "batch_size": ("batch_size=", "--batch-size"),
    "nonfinite_loss": ("nonfinite_loss='skip'", "--nonfinite-loss skip"),
}

_COMMAND_LINE: ContextVar[bool] = ContextVar("robustode_command_line", default=False)


def on_command_line() -> bool:
    """Whether the caller is the command line (messages name flags) or Python code."""
    return _COMMAND_LINE.get()


def spell(name: str) -> str:
    """How the caller passes option ``name``: ``overwrite=True`` in Python, ``--overwrite``
    on the command line."""
    python, cli = _SPELLINGS.get(name, (f"{name}=", "--" + name.replace("_", "-")))
    return cli if _COMMAND_LINE.get() else python


@contextlib.contextmanager
def command_line_spelling() -> Iterator[None]:
    """Within this block, messages name command-line flags instead of Python arguments."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


__all__ = [
    "FolderError",
    "InputError",
    "ResourceError",
    "RobustodeError",
    "WriteError",
    "command_line_spelling",
    "on_command_line",
    "spell",
]
