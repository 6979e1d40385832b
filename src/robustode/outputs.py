"""Output folders: one writer at a time, and robustode touches only the files it wrote.

Every command that writes — train, evaluate, audit, steps, stability, demo,
reproduce, a dataset download — claims its folder with an
:class:`OutputFolder` for as long as it runs:

- **one writer**: an exclusive ``flock`` on ``FOLDER/.robustode/lock``; a second
  process gets one line naming the holder's PID and command. The kernel drops
  the lock when its process dies, even by SIGKILL, so a crash never leaves a
  folder locked;
- **a manifest** (``FOLDER/.robustode/manifest.jsonl``) of every file robustode
  wrote there and by which command. Only those files are ever replaced or
  deleted; ``overwrite`` replaces robustode's own results, never a user's
  files. A file robustode would have to replace but did not write is refused
  with one line;
- **which command's results a folder holds**: the marker files of
  :data:`MARKERS` that the manifest says robustode wrote. A folder holding
  another command's results is refused unless ``overwrite``; a marker file
  robustode did not write (a user's own ``config.json``) is refused always.

Temporary files of writers that died (``NAME.<pid>.<random>.tmp``) are swept
when the folder is claimed: holding the lock proves their writer is gone.
The Python API and the command line go through this class alike.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import FolderError, InputError, WriteError, spell
from .io import (
    append_line,
    fsync_dir,
    is_temporary,
    make_folder,
    read_bytes_limited,
    write_bytes_atomic,
)

STATE_DIR = ".robustode"
LOCK_FILE = "lock"
MANIFEST_FILE = "manifest.jsonl"
MANIFEST_BYTES = 256 << 20

# command -> the entries at the top of its output folder that only it writes
MARKERS: dict[str, tuple[str, ...]] = {
    "train": ("config.json", "metrics.jsonl", "checkpoints"),
    "evaluate": ("eval_config.json", "report.json"),
    "audit": ("audit.json",),
    "steps": ("steps.json",),
    "stability": ("stability.json",),
    "demo": ("demo.json",),
    "reproduce": ("reproduce.json",),
    "download": (),
}

try:  # POSIX; elsewhere folders are not locked (robustode is tested on Linux)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

# folders this process holds, so that a second claim is an error, not a self-deadlock
_HELD: dict[Path, OutputFolder] = {}


class FolderInUseError(FolderError):
    """Another process holds the folder's lock."""


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (
            f"robustode process {info['pid']} on {info.get('host', '?')} "
            f"('{info.get('command', '?')}', since {info.get('since', '?')})"
        )
    except (ValueError, KeyError, TypeError):
        return "another robustode process"


class OutputFolder:
    """A folder claimed by one robustode command (see the module docstring).

    ``lock=False`` attaches to a folder another process of the same job holds
    (a torchrun rank other than 0): no lock, no checks, but what it writes is
    recorded in the manifest too.
    """

    def __init__(
        self,
        path: str | Path,
        command: str,
        *,
        overwrite: bool = False,
        lock: bool = True,
        out_option: str = "out",
    ) -> None:
        if command not in MARKERS:
            raise ValueError(f"unknown command '{command}'; one of: {', '.join(MARKERS)}")
        # absolute, so that a path built on it (``folder.root / "checkpoints"``) is never
        # taken for a name relative to the folder: with a relative root (``--run-dir runs/r``)
        # that name would be joined to the root a second time (runs/r/runs/r/checkpoints)
        self.root = Path(path).absolute()
        self.command = command
        self.overwrite = overwrite
        self.lock = lock
        self.out_option = out_option
        self._fd: int | None = None
        self._key: Path | None = None
        self._owned: dict[str, str] = {}  # relative path -> command that wrote it
        self._created_root = False
        self._created_state = False

    # ------------------------------------------------------------ claim / release
    def __enter__(self) -> OutputFolder:
        self.claim()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def claim(self) -> OutputFolder:
        """Create the folder, take its lock, read its manifest, sweep dead writers'
        temporary files and refuse another command's results (unless ``overwrite``)."""
        if self.root.exists() and not self.root.is_dir():
            raise FolderError(
                f"{self.root} is a file, not a folder; choose a folder with "
                f"{spell(self.out_option)}"
            )
        self._created_root = not self.root.exists()
        self._created_state = not self.state_dir.exists()
        make_folder(self.state_dir)
        try:
            if self.lock:
                self._take_lock()
            self.refresh()
            if self.lock:
                self._sweep_temporaries()
                self._check_results()
        except BaseException:
            self.release()  # a refused claim holds nothing
            raise
        return self

    def release(self) -> None:
        if self._fd is not None:
            # a claim that wrote nothing leaves no trace: not even the folder, if it made it
            # (the lock file goes while still locked; _take_lock's inode check makes a
            # process that opened it meanwhile try again)
            if self._created_state and not any((self.root / rel).exists() for rel in self._owned):
                with contextlib.suppress(OSError):
                    (self.state_dir / MANIFEST_FILE).unlink(missing_ok=True)
                    (self.state_dir / LOCK_FILE).unlink()
                    self.state_dir.rmdir()
                    if self._created_root:
                        self.root.rmdir()
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._key is not None:
            _HELD.pop(self._key, None)
            self._key = None

    def _take_lock(self) -> None:
        key = self.root.resolve()
        if key in _HELD:
            raise FolderInUseError(
                f"{self.root} is already in use by this process ('robustode "
                f"{_HELD[key].command}'); choose another folder with {spell(self.out_option)}"
            )
        path = self.state_dir / LOCK_FILE
        for _ in range(100):
            try:
                make_folder(self.state_dir)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                finally:
                    os.close(fd)
                raise FolderInUseError(
                    f"{self.root} is in use by {_describe_holder(holder)}; wait for it to "
                    f"finish, or choose another folder with {spell(self.out_option)}"
                ) from None
            try:  # the file locked must still be the lock file: its holder may have removed it
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover
            raise FolderError(f"cannot lock {self.root}: its lock file keeps changing")
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": f"robustode {self.command} " + " ".join(sys.argv[1:])[:300],
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        self._key = key
        _HELD[key] = self

    # ------------------------------------------------------------ manifest
    def refresh(self) -> None:
        """Read the manifest again (another rank of the same job may have written files)."""
        owned: dict[str, str] = {}
        path = self.state_dir / MANIFEST_FILE
        text = ""
        if path.exists() or path.is_symlink():
            try:
                text = read_bytes_limited(path, MANIFEST_BYTES, what="manifest").decode(
                    "utf-8", "replace"
                )
            except InputError as exc:
                raise FolderError(
                    f"{self.root}'s manifest cannot be read ({exc}); choose another folder "
                    f"with {spell(self.out_option)}"
                ) from None
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                rel, by = str(entry["path"]), str(entry.get("by", ""))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a killed writer
            if entry.get("op") == "remove":
                owned.pop(rel, None)
            else:
                owned[rel] = by
        self._owned = owned

    def relative(self, path: str | Path) -> str:
        """``path`` (absolute, or relative to the folder) as a path relative to the folder;
        a path outside it is a ``ValueError`` (a bug in the caller)."""
        path = Path(path)
        full = path if path.is_absolute() else self.root / path
        try:
            rel = full.relative_to(self.root)
        except ValueError:
            try:
                rel = full.resolve().relative_to(self.root.resolve())
            except ValueError:
                rel = None
        if rel is None or str(rel) in ("", ".") or rel.parts[0] == STATE_DIR or ".." in rel.parts:
            raise ValueError(f"{path} is not a file inside the output folder {self.root}")
        # a symlink inside the folder must not carry a write (or a delete) outside it
        if not (self.root / rel).resolve().is_relative_to(self.root.resolve()):
            raise FolderError(
                f"{self.root / rel} leads out of the output folder {self.root} (a symbolic "
                f"link); robustode writes only inside it: choose another folder with "
                f"{spell(self.out_option)}"
            )
        return rel.as_posix()

    def path(self, rel: str | Path) -> Path:
        return self.root / self.relative(rel)

    def owns(self, path: str | Path) -> bool:
        """Whether robustode wrote ``path`` (a file or folder) in this folder."""
        rel = self.relative(path)
        if rel in self._owned:
            return True
        prefix = rel + "/"
        return any(k.startswith(prefix) for k in self._owned)

    def owned_by(self, command: str) -> list[str]:
        return sorted(rel for rel, by in self._owned.items() if by == command)

    def _record(self, rel: str, op: str = "write") -> None:
        if op == "write" and self._owned.get(rel) == self.command:
            return
        append_line(
            self.state_dir / MANIFEST_FILE,
            json.dumps({"op": op, "path": rel, "by": self.command}),
        )
        if op == "write":
            self._owned[rel] = self.command
        else:
            self._owned.pop(rel, None)

    def check_writable(self, path: str | Path) -> None:
        """Refuse to replace a file at ``path`` that robustode did not write."""
        rel = self.relative(path)
        full = self.root / rel
        if (full.exists() or full.is_symlink()) and rel not in self._owned:
            raise FolderError(
                f"{full} was not written by robustode, and robustode never replaces a file it "
                f"did not write; move it away, or choose another folder with "
                f"{spell(self.out_option)}"
            )

    # ------------------------------------------------------------ writing
    def prepare_write(self, path: str | Path) -> Path:
        """Record ``path`` as robustode's before the caller writes it (atomically, its own
        way: a streamed download, a file moved out of an extraction); a file there that
        robustode did not write is refused."""
        rel = self.relative(path)
        self.check_writable(rel)
        full = self.root / rel
        make_folder(full.parent)
        self._record(rel)
        return full

    def write_bytes(self, path: str | Path, data: bytes) -> Path:
        """Write ``data`` atomically at ``path`` (inside the folder) and record it as ours."""
        rel = self.relative(path)
        self.check_writable(rel)
        full = self.root / rel
        make_folder(full.parent)
        # recorded first: a crash between the two leaves a manifest entry for a file that
        # does not exist (harmless), never a file of ours the manifest does not know
        self._record(rel)
        write_bytes_atomic(data, full)
        return full

    def write_json(self, path: str | Path, obj: Any) -> Path:
        return self.write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())

    def write_text(self, path: str | Path, text: str) -> Path:
        return self.write_bytes(path, text.encode())

    def append_line(self, path: str | Path, line: str) -> Path:
        rel = self.relative(path)
        self.check_writable(rel)
        full = self.root / rel
        make_folder(full.parent)
        self._record(rel)
        append_line(full, line)
        return full

    def remove(self, path: str | Path) -> bool:
        """Delete ``path`` if robustode wrote it (True), else leave it (False)."""
        rel = self.relative(path)
        if rel not in self._owned:
            return False
        full = self.root / rel
        try:
            full.unlink(missing_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot delete {full}: {exc.strerror or exc}") from exc
        self._record(rel, op="remove")
        return True

    def remove_tree(self, path: str | Path) -> int:
        """Delete every file robustode wrote under ``path`` and the folders that become empty;
        a user's files there (and their folders) stay. Returns the number deleted."""
        rel = self.relative(path)
        prefix = rel + "/"
        gone = 0
        for owned in sorted(k for k in list(self._owned) if k == rel or k.startswith(prefix)):
            gone += self.remove(owned)
        base = self.root / rel
        if base.is_dir():
            for folder in sorted(
                (p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only an empty folder goes
            with contextlib.suppress(OSError):
                base.rmdir()
        return gone

    def unowned(self, path: str | Path) -> list[Path]:
        """The files under ``path`` robustode did not write (temporaries excluded)."""
        base = self.root / self.relative(path)
        if base.is_file():
            return [] if self.owns(base) else [base]
        if not base.is_dir():
            return []
        return sorted(
            p
            for p in base.rglob("*")
            if (p.is_file() or p.is_symlink()) and not is_temporary(p) and not self.owns(p)
        )

    # ------------------------------------------------------------ checks
    def refuse_other_settings(
        self,
        result_file: str,
        fingerprint: Any,
        *,
        what: str,
        key: tuple[str, ...] = ("fingerprint",),
    ) -> None:
        """Refuse (unless ``overwrite``) to replace ``result_file`` when it holds a result of
        another fingerprint — another model, data, settings or version — naming what changed."""
        from .fingerprint import changes
        from .io import read_json_limited

        path = self.root / result_file
        if not path.exists() or self.overwrite:
            return
        try:
            previous = read_json_limited(path, what=what)
            for part in key:
                previous = previous.get(part) if isinstance(previous, dict) else None
        except InputError:
            previous = None
        if previous == fingerprint:
            return
        changed = "; ".join(changes(previous, fingerprint)) if previous else "unreadable"
        raise FolderError(
            f"{path} holds {what} of other settings ({changed}); pass {spell('overwrite')} to "
            f"replace it, or choose another folder with {spell(self.out_option)}"
        )

    def _walk(self) -> Iterator[Path]:
        """Files of this folder, not descending into folders another claim owns."""
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(folder.iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.name == STATE_DIR:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    if not (entry / STATE_DIR).is_dir():
                        stack.append(entry)
                elif entry.is_file():
                    yield entry

    def _sweep_temporaries(self) -> None:
        swept = False
        for path in self._walk():
            if is_temporary(path):
                with contextlib.suppress(OSError):
                    path.unlink()
                    swept = True
        if swept:
            fsync_dir(self.root)

    def results_held(self) -> dict[str, list[str]]:
        """{command: its marker entries present here that robustode wrote}."""
        found: dict[str, list[str]] = {}
        for command, markers in MARKERS.items():
            present = [
                m for m in markers if (self.root / m).exists() and self._owned_marker(m) == command
            ]
            if present:
                found[command] = present
        return found

    def _owned_marker(self, marker: str) -> str | None:
        if marker in self._owned:
            return self._owned[marker]
        prefix = marker + "/"
        for rel, by in self._owned.items():
            if rel.startswith(prefix):
                return by
        return None

    def _check_results(self) -> None:
        foreign = [
            m
            for m in MARKERS[self.command]
            if (self.root / m).exists() and self._owned_marker(m) is None
        ]
        if foreign:
            raise FolderError(
                f"{self.root} holds {', '.join(foreign)}, which robustode did not write; "
                f"robustode never replaces a user's files: choose another folder with "
                f"{spell(self.out_option)}"
            )
        if self.overwrite:
            return
        others = {k: v for k, v in self.results_held().items() if k != self.command}
        if others:
            held = "; ".join(f"'robustode {k}' ({', '.join(v)})" for k, v in others.items())
            raise FolderError(
                f"{self.root} holds the results of {held}, not of 'robustode {self.command}'; "
                f"choose another folder with {spell(self.out_option)}, or pass "
                f"{spell('overwrite')} to write there all the same (files that are not this "
                "command's are kept)"
            )


def kinds_in(folder: str | Path) -> dict[str, list[str]]:
    """{command: the marker entries robustode wrote} for every command whose results
    ``folder`` holds (read without claiming it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    probe = OutputFolder(folder, "download", lock=False)
    probe.refresh()
    return probe.results_held()


__all__ = [
    "MARKERS",
    "STATE_DIR",
    "FolderInUseError",
    "OutputFolder",
    "kinds_in",
]
