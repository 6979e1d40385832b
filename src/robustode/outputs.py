"""Output folders: which command's results a folder holds, so that none are mixed up.

Every writing command leaves, at the top of the folder it was given, a file
that names what the folder holds (a training run's ``config.json``, an
evaluation's ``eval_config.json``, ``audit.json``, …). Before writing, a
command asks :func:`refuse_other_kind`: a folder holding another command's
results is refused unless the caller passes ``overwrite`` — then the new
results are written beside the old ones, whose files are left as they are
(only a command's own files are ever replaced). Each command also refuses its
own kind of results from other settings unless ``overwrite``; that check lives
with the command, which knows its settings.
"""

from __future__ import annotations

from pathlib import Path

# command -> the entries at the top of its output folder that only it writes
MARKERS: dict[str, tuple[str, ...]] = {
    "train": ("config.json", "metrics.jsonl", "checkpoints"),
    "evaluate": ("eval_config.json", "report.json"),
    "audit": ("audit.json",),
    "steps": ("steps.json",),
    "stability": ("stability.json",),
    "demo": ("demo.json",),
    "reproduce": ("reproduce.json",),
}


def kinds_in(folder: str | Path) -> dict[str, list[str]]:
    """{command: the marker entries found} for every command whose results ``folder`` holds."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found: dict[str, list[str]] = {}
    for command, markers in MARKERS.items():
        present = [m for m in markers if (folder / m).exists()]
        if present:
            found[command] = present
    return found


def refuse_other_kind(
    folder: str | Path, command: str, *, overwrite: bool, out_flag: str = "--out"
) -> None:
    """Raise a ``ValueError`` when ``folder`` holds results of a command other than
    ``command`` (and ``overwrite`` is false), naming what it holds and the way out."""
    if command not in MARKERS:
        raise ValueError(f"unknown command '{command}'; choose one of: {', '.join(MARKERS)}")
    if overwrite:
        return
    others = {k: v for k, v in kinds_in(folder).items() if k != command}
    if others:
        held = "; ".join(f"'robustode {k}' ({', '.join(v)})" for k, v in others.items())
        raise ValueError(
            f"{folder} holds the results of {held}, not of 'robustode {command}'; choose another "
            f"folder with {out_flag}, or pass --overwrite to write there all the same (files "
            "that are not this command's are kept)"
        )
