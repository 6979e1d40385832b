"""Reading and writing files so that a crash never leaves half a file and no input is unbounded.

Writes go to a temporary file with a name unique to the writing process
(``NAME.<pid>.<random>.tmp``), are fsynced and renamed into place, so two
processes never share a temporary file and a crash leaves the old file or the
new one. Reads accept only regular files (not a FIFO that would block forever,
not ``/dev/zero`` behind a symlink) and at most a stated number of bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from .errors import InputError, ResourceError, WriteError

# the size caps of the small files robustode reads (JSON records, configs); tensor files
# and data sets have their own, larger caps where they are read
SMALL_FILE_BYTES = 64 << 20
TMP_PATTERN = re.compile(r"\.\d+\.[0-9a-f]{8}\.tmp$")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process (or call) will pick."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file :func:`write_bytes_atomic` writes."""
    return bool(TMP_PATTERN.search(path.name))


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and an atomic rename.

    A crash leaves either the old file or the new one, never half of one; a
    failed write removes its temporary file and raises one :class:`WriteError` line.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        # best effort: where the write failed for a read-only file system, removing the
        # temporary file fails too (EROFS even when it does not exist), and that second
        # error must not hide the first
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    fsync_dir(path.parent)


def make_folder(folder: Path) -> None:
    """``mkdir -p`` whose failure is one :class:`WriteError` line."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot write {folder}: {exc.strerror or exc}") from exc


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically, creating its folder if needed."""
    path = Path(path)
    make_folder(path.parent)
    write_bytes_atomic((json.dumps(obj, indent=2) + "\n").encode(), path)


def append_line(path: Path, line: str) -> None:
    """Append one line to ``path`` and make it durable (one ``write`` call: under
    ``PIPE_BUF`` bytes it never interleaves with another process's line)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line.rstrip("\n") + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


def check_regular_file(path: Path, *, what: str = "file") -> os.stat_result:
    """The ``stat`` of ``path`` (symlinks followed) when it is a regular file; anything else —
    missing, a folder, a FIFO, a device such as ``/dev/zero`` — is one :class:`InputError`."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(info.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "not a regular file"
        )
        raise InputError(f"{path} is {kind}; robustode reads a {what} only from a regular file")
    return info


def read_bytes_limited(path: Path, limit: int = SMALL_FILE_BYTES, *, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, refused beyond ``limit`` bytes.

    The file is opened without blocking and checked again after opening, so a
    FIFO or device swapped in between cannot hang or flood the reader.
    """
    path = Path(path)
    check_regular_file(path, what=what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(
                f"{path} is not a regular file; robustode reads a {what} only from one"
            )
        if info.st_size > limit:
            raise ResourceError(
                f"{path} is {info.st_size:,} bytes, more than the {limit:,} a {what} may have"
            )
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew while being read
        raise ResourceError(f"{path} holds more than the {limit:,} bytes a {what} may have")
    return data


def read_text_limited(path: Path, limit: int = SMALL_FILE_BYTES, *, what: str = "file") -> str:
    """:func:`read_bytes_limited` decoded as UTF-8 (a decoding error is an :class:`InputError`)."""
    data = read_bytes_limited(path, limit, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc})") from None


def read_json_limited(path: Path, limit: int = SMALL_FILE_BYTES, *, what: str = "JSON file") -> Any:
    """The JSON value in ``path`` (regular file, at most ``limit`` bytes)."""
    text = read_text_limited(path, limit, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None
