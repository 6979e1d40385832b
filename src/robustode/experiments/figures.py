"""The figures ``robustode reproduce`` draws: LAD Fig. 2, eq. 16's ratio per epoch.

LAD §4.5 traces ratio = ‖x(0) + f(x(0), 0)‖₂ / ‖∂L/∂x(0)‖₂ (eq. 16) during PGD training
on CIFAR-100 and reads from Fig. 2 that it starts near 2 × 10⁶ and stays above 1 × 10⁵:
values over an order of magnitude and more, so the ratio is plotted on a log axis against
the training epoch. The series come from each run's ``metrics.jsonl`` (the trainer's
``trace_eq16``); this module reads them, tabulates them and plots them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError

EQ16_KEY = "eq16_ratio"
EQ16_PLOT = "lad_f2.png"


class MissingSeriesError(InputError):
    """A run folder has no eq. 16 series (trained without trace_eq16)."""


def eq16_series(run_dir: str | Path) -> dict[str, list[Any]]:
    """``{"epochs", "eq16_ratio", "test_acc"}`` of a run traced with ``trace_eq16``, one entry
    per epoch of its ``metrics.jsonl``."""
    from ..train.run_folder import read_metrics

    records = read_metrics(run_dir)
    if not records or any(EQ16_KEY not in r for r in records):
        raise MissingSeriesError(
            f"{run_dir}: metrics.jsonl has no '{EQ16_KEY}' for every epoch; train with "
            "trace_eq16=true to trace LAD's eq. 16"
        )
    return {
        "epochs": [int(r["epoch"]) for r in records],
        EQ16_KEY: [float(r[EQ16_KEY]) for r in records],
        "test_acc": [r.get("test_acc") for r in records],
    }


def _sci(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3g}"


def format_series_table(series: Mapping[str, Mapping[str, Sequence[Any]]]) -> list[str]:
    """A markdown table, one line per epoch and one column per row: eq. 16's ratio, then the
    final test accuracy of each row."""
    labels = list(series)
    epochs = sorted({int(e) for s in series.values() for e in s["epochs"]})
    lines = ["| epoch | " + " | ".join(labels) + " |", "|---:|" + "---:|" * len(labels)]
    by_epoch = {
        label: dict(zip(s["epochs"], s[EQ16_KEY], strict=True)) for label, s in series.items()
    }
    for epoch in epochs:
        cells = [_sci(by_epoch[label].get(epoch)) for label in labels]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    finals = []
    for s in series.values():
        acc = s.get("test_acc") or [None]
        finals.append("–" if acc[-1] is None else f"{100 * acc[-1]:.1f} %")
    lines.append("| test acc. (last epoch) | " + " | ".join(finals) + " |")
    return lines


def plot_eq16(
    series: Mapping[str, Mapping[str, Sequence[Any]]],
    path: Path,
    *,
    title: str,
    folder=None,
) -> Path:
    """LAD Fig. 2's plot: eq. 16's ratio (log y) against the epoch, one curve per row — a
    colour per base training, solid without LAD and dashed with it — legend outside the
    axes. Written atomically, through ``folder`` when given."""
    from ..evaluate.plots import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bases: dict[str, str] = {}
    for label, s in series.items():
        base, lad = label.split(" + ")[0], " + " in label
        colour = bases.setdefault(base, colours[len(bases) % len(colours)])
        values = [v if v > 0 and math.isfinite(v) else float("nan") for v in s[EQ16_KEY]]
        ax.plot(
            s["epochs"],
            values,
            marker="o" if not lad else "s",
            markersize=4,
            linestyle="--" if lad else "-",
            color=colour,
            label=label,
        )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ratio (eq. 16)  ‖x(0) + f(x(0), 0)‖₂ / ‖∂L/∂x(0)‖₂")
    ax.yaxis.label.set_size(8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return save_png(fig, Path(path), folder=folder)


__all__ = [
    "EQ16_KEY",
    "EQ16_PLOT",
    "MissingSeriesError",
    "eq16_series",
    "format_series_table",
    "plot_eq16",
]
