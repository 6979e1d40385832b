"""The report's PNG plots (matplotlib, Agg backend, imported only when plotting).

- ``robust_vs_steps.png``: robust accuracy against PGD iterations (log x, 1…K);
- ``robust_vs_eps.png``: robust accuracy against ε (in /255 units);
- ``per_attack.png``: a bar per attack, clean accuracy as a dashed line.
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


def _curve(
    points: list[dict[str, Any]],
    xs: list[float],
    clean: float,
    path: Path,
    *,
    folder: OutputFolder,
    xlabel: str,
    xscale: dict[str, float],
    title: str,
    xlim: tuple[float, float] | None = None,
) -> None:
    """One robust-accuracy curve on a log x axis, with the clean accuracy as a line."""
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    ax.plot(xs, [100 * p["robust_accuracy"] for p in points], marker="o")
    ax.set_xscale("log", **xscale)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.axhline(clean, color="gray", linestyle="--", label="clean")
    ax.legend()
    ax.grid(alpha=0.3)
    save_png(fig, path, folder=folder)


def write_plots(report: dict[str, Any], folder: OutputFolder) -> list[Path]:
    """Write the plots the report has data for into the claimed ``folder``; return their
    paths."""
    plt = pyplot()
    out_dir = folder.root
    written: list[Path] = []
    clean = 100 * report["clean_accuracy"]

    steps = report["curves"].get("steps")
    if steps and steps["points"]:
        ks = [p["steps"] for p in steps["points"]]
        path = out_dir / "robust_vs_steps.png"
        _curve(
            steps["points"],
            ks,
            clean,
            path,
            folder=folder,
            xlabel="PGD iterations",
            xscale={"base": 10},
            xlim=(1, max(ks) if max(ks) > 1 else 2),
            title=f"robust accuracy vs steps ({steps['attack']})",
        )
        written.append(path)

    eps = report["curves"].get("eps")
    if eps and eps["points"]:
        path = out_dir / "robust_vs_eps.png"
        _curve(
            eps["points"],
            [p["eps_255"] for p in eps["points"]],
            clean,
            path,
            folder=folder,
            xlabel="ε (×1/255)",
            xscale={"base": 2},
            title=f"robust accuracy vs ε (PGD-{eps['steps']} L∞)",
        )
        written.append(path)

    rows = report["attacks"]
    if rows:
        fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(rows) + 2), 3.5))
        ax.bar(range(len(rows)), [100 * r["robust_accuracy"] for r in rows])
        ax.set_xticks(range(len(rows)), [r["id"] for r in rows], rotation=45, ha="right")
        ax.axhline(clean, color="gray", linestyle="--", label=f"clean {clean:.1f} %")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend()
        path = out_dir / "per_attack.png"
        save_png(fig, path, folder=folder)
        written.append(path)
    return written


__all__ = ["write_plots"]
