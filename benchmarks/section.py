"""One benchmark's result: a Markdown table for people, JSON for plots."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustode.io import write_json_atomic


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions and machine of this run, for every table's heading."""
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpus": len(os.sched_getaffinity(0)),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for peer in ("torchdiffeq", "torchattacks"):
        try:
            from importlib.metadata import version

            versions[peer] = version(peer)
        except Exception:  # not installed: the section that needs it says so
            versions[peer] = None
    return versions


@dataclass
class Section:
    """A benchmark's outcome: ``table`` (Markdown) and ``data`` (rows and settings)."""

    name: str
    title: str
    command: str
    table: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "command": self.command,
            "table": self.table,
            **self.data,
        }

    def write_json(self, path: str | Path) -> None:
        write_json_atomic({"environment": environment(), **self.to_dict()}, Path(path))

    def report(self, json_path: str | Path | None = None) -> None:
        """Print the table (a module's own command line); also write the JSON if asked."""
        print()
        print(self.table)
        if json_path:
            self.write_json(json_path)
