"""The report's PNG plots (matplotlib, Agg backend, imported only when plotting).

- ``robust_vs_steps.png``: robust accuracy against PGD iterations (log x, 1…K);
- ``robust_vs_eps.png``: robust accuracy against ε (in /255 units);
- ``per_attack.png``: a bar per attack, clean accuracy as a dashed line.

Every plot has a title; the curves' x range extends past the first and last
points (a marker on the edge is half cut off); a bar shows its value as a
label, a 0 % bar a short hatched stub and the label "0 %" (an empty slot reads
as a missing attack); legends sit outside the axes, where they hide no bar.
:func:`per_attack_figure`, :func:`curve_figure` and :func:`grouped_bars` build
the figures without saving them, so their layout is testable.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..io import write_bytes_atomic
from ..outputs import OutputFolder


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 120, *, folder: OutputFolder | None = None) -> Path:
    """Write ``fig`` to ``path`` as a PNG atomically (never a half-written file) and close it;
    through ``folder`` (which records it as robustode's) when the caller holds one."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    if folder is not None:
        return folder.write_bytes(path, buffer.getvalue())
    write_bytes_atomic(buffer.getvalue(), Path(path))
    return Path(path)


# a 0 % bar is drawn this tall (in %), hatched, so that it is seen
ZERO_STUB = 1.0
# log-axis margins: the x range is [first / MARGIN, last × MARGIN]
LOG_MARGIN = 1.25


def outside_legend(ax, **options: Any):
    """The legend to the right of the axes, where it cannot hide a bar or a point."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **options)


def value_bars(ax, xs: list[float], values: list[float | None], width: float = 0.8, **options: Any):
    """Bars of ``values`` (in %) at ``xs``, each labelled with its value; a 0 % bar is a hatched
    stub of :data:`ZERO_STUB` labelled "0 %", a None (not run) no bar and the label "n/a".
    Returns the bar container."""
    heights = [0.0 if v is None else (v if v > 0 else ZERO_STUB) for v in values]
    bars = ax.bar(xs, heights, width, **options)
    for bar, value in zip(bars, values, strict=True):
        if value is not None and value <= 0:
            bar.set_hatch("////")
            bar.set_alpha(0.5)
    labels = ["n/a" if v is None else "0 %" if v <= 0 else f"{v:.1f}" for v in values]
    ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
    return bars


def curve_figure(
    points: list[dict[str, Any]],
    xs: list[float],
    clean: float,
    *,
    xlabel: str,
    xscale: dict[str, float],
    title: str,
):
    """One robust-accuracy curve on a log x axis with the clean accuracy as a line; the x
    range has a margin of :data:`LOG_MARGIN` on both sides, so no point sits on the edge."""
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    ax.plot(xs, [100 * p["robust_accuracy"] for p in points], marker="o", label="robust")
    ax.set_xscale("log", **xscale)
    ax.set_xlim(min(xs) / LOG_MARGIN, max(xs) * LOG_MARGIN)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.axhline(clean, color="gray", linestyle="--", label="clean")
    outside_legend(ax, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def per_attack_figure(report: dict[str, Any]):
    """A bar per attack with its robust accuracy as a label, the clean accuracy as a dashed
    line, a title naming the images and the legend outside the axes."""
    rows = report["attacks"]
    clean = 100 * report["clean_accuracy"]
    fig, ax = pyplot().subplots(figsize=(max(4, 0.7 * len(rows) + 3), 3.8))
    value_bars(ax, list(range(len(rows))), [100 * r["robust_accuracy"] for r in rows])
    ax.set_xticks(range(len(rows)), [r["id"] for r in rows], rotation=45, ha="right")
    ax.axhline(clean, color="gray", linestyle="--", label=f"clean {clean:.1f} %")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 108)  # room for the labels above a 100 % bar
    ax.set_title(f"Robust accuracy per attack ({report['n']} images)", fontsize=10)
    outside_legend(ax, fontsize=8)
    return fig


def grouped_bars(
    groups: list[str], series: list[tuple[str, list[float | None]]], *, title: str, ylabel: str
):
    """Grouped bars (one group per entry of ``groups``, one bar per series, values in [0, 1]
    or None for "not run"), each labelled, the legend outside the axes."""
    fig, ax = pyplot().subplots(figsize=(max(6, 1.2 * len(groups) + 3), 4))
    width = 0.8 / max(len(series), 1)
    for j, (label, values) in enumerate(series):
        xs = [i + j * width for i in range(len(groups))]
        value_bars(ax, xs, [None if v is None else 100 * v for v in values], width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 108)
    ax.set_title(title, fontsize=10)
    outside_legend(ax, fontsize=8)
    return fig


def write_plots(report: dict[str, Any], folder: OutputFolder) -> list[Path]:
    """Write the plots the report has data for into the claimed ``folder``; return their
    paths."""
    out_dir = folder.root
    written: list[Path] = []
    clean = 100 * report["clean_accuracy"]

    steps = report["curves"].get("steps")
    if steps and steps["points"]:
        path = out_dir / "robust_vs_steps.png"
        fig = curve_figure(
            steps["points"],
            [p["steps"] for p in steps["points"]],
            clean,
            xlabel="PGD iterations",
            xscale={"base": 10},
            title=f"robust accuracy vs steps ({steps['attack']})",
        )
        save_png(fig, path, folder=folder)
        written.append(path)

    eps = report["curves"].get("eps")
    if eps and eps["points"]:
        path = out_dir / "robust_vs_eps.png"
        fig = curve_figure(
            eps["points"],
            [p["eps_255"] for p in eps["points"]],
            clean,
            xlabel="ε (×1/255)",
            xscale={"base": 2},
            title=f"robust accuracy vs ε (PGD-{eps['steps']} L∞)",
        )
        save_png(fig, path, folder=folder)
        written.append(path)

    if report["attacks"]:
        path = out_dir / "per_attack.png"
        save_png(per_attack_figure(report), path, folder=folder)
        written.append(path)
    return written


__all__ = [
    "curve_figure",
    "grouped_bars",
    "outside_legend",
    "per_attack_figure",
    "value_bars",
    "write_plots",
]
