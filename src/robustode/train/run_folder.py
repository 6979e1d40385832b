"""A run folder: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``summary.json``.

A folder that already holds a run is never overwritten by accident: starting
a run there needs ``resume`` (continue it, same config) or ``overwrite``
(delete that run's files — only those — and start over).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ..io import write_bytes_atomic, write_json_atomic
from ..outputs import refuse_other_kind
from .checkpoint import CHECKPOINT_DIR, LATEST
from .config import ConfigError, TrainConfig, field_names

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"

# Fields a resumed run may change: none of them alters what the next epoch computes
# on the same machine (device moves it, at the cost of bitwise equality). nonfinite_loss
# changes it only where a loss is not finite, where "stop" computes nothing: a run that
# stopped there may go on with "skip".
RESUMABLE = (
    "epochs",
    "checkpoint_every",
    "keep_checkpoints",
    "test_batch_size",
    "device",
    "compile",
    "data_dir",
    "download",
    "nonfinite_loss",
)


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in (CONFIG, METRICS, CHECKPOINT_DIR))


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was started with."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise ConfigError(f"nothing to resume in {run_dir}: it has no {CONFIG}")
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    return [name for name in field_names() if getattr(a, name) != getattr(b, name)]


def resume_conflicts(run_dir: Path, config: TrainConfig) -> list[str]:
    """The fields in which the run ``run_dir`` holds differs from ``config`` beyond what a
    resume may change (:data:`RESUMABLE`); [] when it holds no run. An unreadable config
    counts as the conflict ``config.json``."""
    if not (run_dir / CONFIG).exists():
        return []
    try:
        stored = read_run_config(run_dir)
    except ConfigError:
        return [CONFIG]
    return [n for n in differences(stored, config) if n not in RESUMABLE]


def refuse_changed_runs(folder: Path, runs: dict[str, TrainConfig], held: str) -> None:
    """Before a command that trains several runs under ``folder`` starts: a ``ValueError``
    when one of them (``runs``: sub-folder name → config) already holds a run of other
    settings, which a resume would refuse only once it got there. ``held`` names what the
    folder holds ("a demo", "rows")."""
    for name, config in runs.items():
        changed = resume_conflicts(folder / name, config)
        if changed:
            raise ValueError(
                f"{folder} holds {held} of other settings ({name} differs in "
                f"{', '.join(changed)}); pass --overwrite to redo it, or --out for another "
                "folder"
            )


def check_run_dir(run_dir: Path, config: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, a start that would lose or mix up a run."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} is a file")
    if resume:
        stored = read_run_config(run_dir)
        changed = [n for n in differences(stored, config) if n not in RESUMABLE]
        if changed:
            raise ConfigError(
                f"cannot resume {run_dir} with a changed {', '.join(changed)}; a resumed run "
                f"may change only: {', '.join(RESUMABLE)}"
            )
        return
    # a folder holding an evaluation, an audit, … is not a run folder to start in
    try:
        refuse_other_kind(run_dir, "train", overwrite=overwrite, out_flag="--run-dir")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if overwrite or not holds_run(run_dir):
        return
    try:
        stored = read_run_config(run_dir)
    except ConfigError:
        stored = None
    if stored is not None and not differences(stored, config):
        what = "this run already (same config)"
    elif stored is not None:
        what = f"a different run (it differs in {', '.join(differences(stored, config))})"
    else:
        what = "a run"
    raise ConfigError(
        f"{run_dir} holds {what}; pass --resume to continue it or --overwrite to start over"
    )


def clear_run(run_dir: Path) -> None:
    """Delete a previous run's files (and only those) from ``run_dir``."""
    for name in (LATEST, SUMMARY, METRICS, CONFIG):
        target = run_dir / CHECKPOINT_DIR / name if name == LATEST else run_dir / name
        target.unlink(missing_ok=True)
    folder = run_dir / CHECKPOINT_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith("epoch-") and path.suffix in (".json", ".safetensors", ".tmp"):
                path.unlink()
        with contextlib.suppress(OSError):  # something else lives there: leave it
            folder.rmdir()


def write_config(run_dir: Path, config: TrainConfig) -> None:
    write_json_atomic(config.to_dict(), run_dir / CONFIG)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` and make it durable."""
    path = run_dir / METRICS
    try:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OSError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every epoch's record of a run folder (a torn last line, from a crash, is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Keep the records of epochs ≤ ``epoch`` only (those a resumed run does not redo)."""
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= epoch]
    write_bytes_atomic("".join(json.dumps(r) + "\n" for r in kept).encode(), path)
