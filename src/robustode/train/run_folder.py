"""A run folder: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``summary.json``.

A run folder is claimed through :class:`~robustode.outputs.OutputFolder` for the
whole run: one process at a time, and only the files robustode wrote there are
ever replaced or deleted. A folder that already holds a run is never
overwritten by accident: the same config goes on where it stopped (as a rerun
of a finished evaluation does); another config needs ``resume`` (continue
it, changing only what :data:`RESUMABLE` lists) or ``overwrite`` (delete that
run's files — only robustode's — and start over).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FolderError, InputError, spell
from ..io import read_json_limited, read_text_limited
from ..outputs import OutputFolder
from .checkpoint import CHECKPOINT_DIR
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
        values = read_json_limited(path, what="run config")
    except InputError as exc:
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
    """Before a command that trains several runs under ``folder`` starts: a ``FolderError``
    when one of them (``runs``: sub-folder name → config) already holds a run of other
    settings, which a resume would refuse only once it got there. ``held`` names what the
    folder holds ("a demo", "rows")."""
    for name, config in runs.items():
        changed = resume_conflicts(folder / name, config)
        if changed:
            raise FolderError(
                f"{folder} holds {held} of other settings ({name} differs in "
                f"{', '.join(changed)}); pass {spell('overwrite')} to redo it, or choose "
                f"another folder with {spell('out')}"
            )


def start_mode(folder: OutputFolder, config: TrainConfig, *, resume: bool, overwrite: bool) -> str:
    """How a run starts in the claimed ``folder``: ``"new"`` (nothing there, or
    ``overwrite``), or ``"continue"`` (``resume``, or the same config again). Refuses, before
    anything is written, a start that would lose or mix up a run."""
    run_dir = folder.root
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other")
    if resume:
        stored = read_run_config(run_dir)
        changed = [n for n in differences(stored, config) if n not in RESUMABLE]
        if changed:
            raise ConfigError(
                f"cannot resume {run_dir} with a changed {', '.join(changed)}; a resumed run "
                f"may change only: {', '.join(RESUMABLE)}"
            )
        return "continue"
    if overwrite or not holds_run(run_dir):
        return "new"
    try:
        stored = read_run_config(run_dir)
    except ConfigError:
        stored = None
    if stored is not None and not differences(stored, config):
        return "continue"  # the same command again goes on where the run stopped
    what = (
        f"a different run (it differs in {', '.join(differences(stored, config))})"
        if stored is not None
        else "a run whose config cannot be read"
    )
    raise ConfigError(
        f"{run_dir} holds {what}; pass {spell('resume')} to continue it (changing only "
        f"{', '.join(RESUMABLE)}) or {spell('overwrite')} to start over"
    )


def clear_run(folder: OutputFolder) -> None:
    """Delete a previous run's files — only those robustode wrote — from the run folder."""
    for name in (SUMMARY, METRICS, CONFIG):
        folder.remove(name)
    folder.remove_tree(CHECKPOINT_DIR)


def write_config(folder: OutputFolder | Path, config: TrainConfig) -> None:
    if isinstance(folder, OutputFolder):
        folder.write_json(CONFIG, config.to_dict())
    else:
        from ..io import write_json_atomic

        write_json_atomic(config.to_dict(), Path(folder) / CONFIG)


def append_metrics(folder: OutputFolder, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` and make it durable."""
    folder.append_line(METRICS, json.dumps(record))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every epoch's record of a run folder (a torn last line, from a crash, is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for line in read_text_limited(path, 1 << 30, what="metrics file").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(folder: OutputFolder, epoch: int) -> None:
    """Keep the records of epochs ≤ ``epoch`` only (those a resumed run does not redo)."""
    if not (folder.root / METRICS).exists():
        return
    kept = [r for r in read_metrics(folder.root) if r.get("epoch", 0) <= epoch]
    folder.write_text(METRICS, "".join(json.dumps(r) + "\n" for r in kept))
