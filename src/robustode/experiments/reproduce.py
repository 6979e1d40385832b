"""``robustode reproduce TABLE``: train and evaluate every row of a paper's table, print ours
next to the paper's numbers.

Two scales:

- ``full`` — the papers' settings (the table's training recipe: SONet's 350
  epochs or LAD's 160/300, full widths and depths, CIFAR-10/100, the whole
  test set). A GPU and the full dataset are needed; on a CPU this takes weeks.
- ``smoke`` — the same pipeline in minutes on a CPU: the digits data (8×8,
  embedded, no download), small widths and depths, two epochs, the first 64
  test images, PGD/IFGSM capped at 100 iterations, only the rows listed in
  ``SMOKE_ROWS`` where a table has many. Its numbers check the pipeline, not
  the papers. A table with CIFAR-10 and CIFAR-100 groups runs the CIFAR-10 group
  only (both would train on the same digits).

Every row is a run folder ``OUT/TABLE/ROW`` (training resumes, evaluation
batches are cached), so an interrupted reproduce continues where it stopped.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import InputError
from .paper_tables import PAPER_TABLES, Column, PaperTable, Row, sonet_t3_grids

SCALES = ("smoke", "full")


@dataclass(frozen=True)
class Scale:
    """How a table is run: training overrides, per-model options, evaluation size.

    ``autoattack``: budget overrides of the ``autoattack`` columns (none at full scale:
    AutoAttack's own)."""

    name: str
    train: dict[str, Any]
    model_options: dict[str, dict[str, Any]]
    n_eval: int | None
    max_attack_steps: int | None
    pgd_iterations: tuple[int, ...] = (1, 100, 1000)
    skip_data: tuple[str, ...] = ()
    autoattack: dict[str, int] = field(default_factory=dict)


FULL = Scale("full", {}, {}, None, None)
SMOKE = Scale(
    "smoke",
    {
        "data": "digits",
        "data_dir": None,
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.05,
        "milestones": [],
        "augment": False,
    },
    {
        "resnet10": {"width": 8},
        "soblock": {"width": 8},
        "sonet": {"width": 8, "blocks_per_stage": 1},
        "odenet": {"width": 8, "num_blocks": 2},
        "wrn34_10_soblock": {"depth": 10, "widen_factor": 1},
        "preact_resnet56": {"width": 8, "depth": 14},
        "inresnet56": {"width": 8, "depth": 14},
        "lambda_inresnet56": {"width": 8, "depth": 14},
    },
    64,
    100,
    (1, 10, 50),
    ("cifar100",),
    {"steps": 10, "queries": 100, "eot_iter": 2},
)

# depth 14 (two blocks a stage) is the least at which In-ResNet has a damped block: its
# first block and its downsampling blocks stay plain

# Tables with many rows run a representative subset at smoke scale.
SMOKE_ROWS: dict[str, tuple[str, ...]] = {
    "sonet-t1": ("SONet 32", "SOBlock 32", "ResNet10-TRADES (1/λ = 6) 32"),
    "sonet-t2": (
        "SOBlock Euler",
        "SOBlock RK4 (3/8 rule)",
        "SOBlock Dopri5 (tol 0.1)",
        "SOBlock Bosh3 (tol 0.1)",
        "SOBlock Adaptive Heun (tol 0.1)",
        "ODENet Euler",
        "ODENet Dopri5 (tol 0.1)",
    ),
    "sonet-t4": ("SONet 32", "SOBlock 32", "ResNet10-TRADES (1/λ = 6) 32"),
    "lad-t5": ("PGD + LAD η=0", "PGD + LAD η=1000", "PGD + LAD-SM η=1000"),
}


def list_tables() -> list[str]:
    return list(PAPER_TABLES)


def get_table(name: str) -> PaperTable:
    try:
        return PAPER_TABLES[name]
    except KeyError:
        raise InputError(
            f"unknown table '{name}'; choose one of: {', '.join(list_tables())} "
            "(robustode reproduce --list)"
        ) from None


def slug(text: str) -> str:
    """A folder name for a row label."""
    text = text.replace("λ", "lambda").replace("η", "eta").replace("/", "-")
    return re.sub(r"[^A-Za-z0-9.=_-]+", "-", text).strip("-").lower()


def _spec_with(spec: str, **options: Any) -> str:
    name, _, rest = spec.partition(":")
    parts = [p for p in rest.split(",") if p and p.split("=")[0] not in options]
    parts += [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()]
    return f"{name}:{','.join(parts)}" if parts else name


def scaled_attack(spec: str, scale: Scale) -> str:
    """The attack spec at ``scale``: iteration counts capped at smoke scale (and AutoAttack's
    budgets cut to ``scale.autoattack``)."""
    name, _, rest = spec.partition(":")
    if name == "autoattack" and scale.autoattack:
        return _spec_with(spec, **scale.autoattack)
    if scale.max_attack_steps is None:
        return spec
    options = dict(p.split("=", 1) for p in rest.split(",") if p)
    match = re.match(r"^(?:pgd|ifgsm)(\d+)", name)
    steps = int(options.get("steps", match.group(1) if match else 0) or 0)
    if steps > scale.max_attack_steps:
        return _spec_with(spec, steps=scale.max_attack_steps)
    return spec


def rows_at(table: PaperTable, scale: Scale) -> list[Row]:
    """The rows run at ``scale``. At smoke scale every row trains on digits, so a table with
    CIFAR-10 and CIFAR-100 groups runs its CIFAR-10 group only; a CIFAR-100-only table
    (LAD Tables 5 and 7) runs on digits as it is."""
    rows = [r for r in table.rows if r.train.get("data", "cifar10") not in scale.skip_data]
    if not rows:
        rows = list(table.rows)
    if scale.name == "smoke" and table.name in SMOKE_ROWS:
        wanted = SMOKE_ROWS[table.name]
        rows = [r for r in rows if r.label in wanted]
    return rows


DATA_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "digits": "digits (8×8)"}


def data_used(row: Row, scale: Scale) -> str:
    """The dataset ``row`` is trained and evaluated on at ``scale`` (smoke: digits)."""
    return str(scale.train.get("data") or row.train.get("data", "cifar10"))


def row_label(row: Row, scale: Scale) -> str:
    """The row as printed: the paper's label where the row runs on the paper's data; at a
    scale that swaps the data (smoke: digits) the group prefix names the data actually used
    and the paper's group follows — ``digits (8×8) PGD + LAD (paper: CIFAR-10)``, never a
    row trained on digits labelled CIFAR-10."""
    used = data_used(row, scale)
    if used == row.train.get("data", "cifar10"):
        return row.label
    name = DATA_NAMES.get(used, used)
    if row.group in DATA_NAMES.values() and row.label.startswith(row.group):
        rest = row.label[len(row.group) :].strip()
        return f"{name} {rest} (paper: {row.group})".replace("  ", " ")
    return f"{row.label} ({name})"


def train_config(table: PaperTable, row: Row, scale: Scale, *, data_dir: str | None, **extra):
    """The TrainConfig of ``row`` at ``scale``: the table's recipe, the row, the scale."""
    from ..train import build_config

    recipe = table.recipe
    if table.paper == "lad" and row.train.get("data") == "cifar100":
        recipe = "lad-cifar100"
    overrides: dict[str, Any] = {k: v for k, v in row.train.items()}
    model = overrides["model"]
    options = dict(overrides.get("model_options", {}))
    options.update(scale.model_options.get(model, {}))
    overrides["model_options"] = options
    overrides.update(scale.train)
    if scale.name == "full" and data_dir is not None:
        overrides["data_dir"] = data_dir
    overrides.update(extra)
    return build_config(preset_name=recipe, overrides=overrides)


@dataclass
class RowResult:
    label: str  # the paper's row (names the run folder)
    group: str
    run_dir: str
    ours: dict[str, float | None]
    paper: dict[str, float]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    data: str = ""  # the dataset the row was trained and evaluated on
    shown: str = ""  # the label as printed (row_label: names the data actually used)


@dataclass
class ReproduceResult:
    table: PaperTable
    scale: Scale
    rows: list[RowResult]
    out_dir: Path
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table.name,
            "paper": self.table.paper,
            "number": self.table.number,
            "title": self.table.title,
            "scale": self.scale.name,
            "columns": [
                {"key": c.key, "header": c.header, "attack": c.attack} for c in self.table.columns
            ],
            "rows": [r.__dict__ for r in self.rows],
            "notes": list(self.table.notes) + scale_notes(self.table, self.scale),
            "seconds": self.seconds,
        }


def scale_notes(table: PaperTable, scale: Scale) -> list[str]:
    if scale.name == "full":
        return []
    notes = [
        "smoke scale: digits data (8×8), two epochs, small models, the first "
        f"{scale.n_eval} test images, iterative attacks capped at {scale.max_attack_steps} "
        "steps — these numbers check the pipeline; they are not the paper's experiment."
    ]
    if scale.autoattack and any(
        (c.attack or "").partition(":")[0] == "autoattack" for c in table.columns
    ):
        budget = ", ".join(f"{k} {v}" for k, v in scale.autoattack.items())
        notes.append(f"AutoAttack at smoke scale runs a cut budget ({budget}).")
    run = rows_at(table, scale)
    skipped = [r.label for r in table.rows if r not in run]
    if skipped:
        notes.append(f"rows not run at smoke scale: {', '.join(skipped)}")
    return notes


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def format_table(result: ReproduceResult) -> str:
    """Our numbers next to the paper's: each cell is ``ours (paper)`` in percent."""
    table = result.table
    used = sorted({r.data for r in result.rows if r.data})
    trained_on = (
        f" (trained and evaluated on {', '.join(DATA_NAMES.get(d, d) for d in used)}, not the "
        "paper's data)"
        if result.scale.train.get("data")
        else ""
    )
    lines = [
        f"### {table.paper.upper()} Table {table.number}: {table.title} "
        f"— {result.scale.name} scale{trained_on}",
        "",
    ]
    if table.kind == "steps":
        lines += [
            "| row | PGD iterations | accepted grid (ours) | accepted grid (paper) |",
            "|---|---:|---|---|",
        ]
        for r in result.rows:
            for k, grid in r.extra.get("grids", {}).items():
                paper = r.extra.get("paper_grids", {}).get(k)
                theirs = "–" if paper is None else _grid(paper)
                lines.append(f"| {r.shown or r.label} | {k} | {_grid(grid)} | {theirs} |")
    else:
        lines.append("| row | " + " | ".join(c.header for c in table.columns) + " |")
        lines.append("|---|" + "---:|" * len(table.columns))
        for r in result.rows:
            cells = []
            for c in table.columns:
                paper = r.paper.get(c.key)
                ours = _pct(r.ours.get(c.key))
                cells.append(ours if paper is None else f"{ours} ({paper:.2f})")
            lines.append(f"| {r.shown or r.label} | " + " | ".join(cells) + " |")
    if table.kind == "steps":
        ran = ", ".join(map(str, result.scale.pgd_iterations))
        lines += [
            "",
            "Grids: the accepted step start times of the first ODE block on the first 16 test "
            "images (batch step control, as deployed), then t1; after k PGD L∞ iterations "
            f"(ε 0.031, step 0.003). Iterations run: {ran}.",
        ]
    else:
        lines += ["", "Cells: ours (paper), robust or clean accuracy in %."]
    lines += [f"- {n}" for n in list(table.notes) + scale_notes(table, result.scale)]
    return "\n".join(lines)


def _grid(grid: list[float]) -> str:
    return "[" + ", ".join(f"{t:.3f}" for t in grid) + "]"


def randomised_at_inference(row: Row) -> bool:
    """The row is evaluated through a randomised model (NoisyEnsemble, LAD §4.4)."""
    return bool(row.inference.get("noisy_ensemble"))


def row_attack(column: Column, row: Row) -> str:
    """The attack spec of ``column`` for ``row``: an ``autoattack`` column runs AutoAttack's
    rand version (EOT) on a row whose model is randomised at inference, as AutoAttack
    prescribes for randomised defenses; every other cell runs the column's spec."""
    spec = column.attack or ""
    name = spec.partition(":")[0]
    if name == "autoattack" and randomised_at_inference(row):
        return _spec_with(spec, version="rand")
    return spec


def _model_for_eval(model, row: Row):
    noisy = row.inference.get("noisy_ensemble")
    if noisy:
        from ..defenses import NoisyEnsemble

        # noise from the global RNG, which every attack run seeds from its (attack, batch)
        # seed: each batch's verdict is reproducible whatever order the batches run in
        return NoisyEnsemble(model, k=int(noisy["k"]), std=float(noisy["std"]), seed=None)
    return model


def _evaluate_row(
    table: PaperTable,
    row: Row,
    run_dir: Path,
    scale: Scale,
    batch_size: int,
    device: str,
    overwrite: bool = False,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    from ..evaluate import load_target
    from ..evaluate.runner import run_evaluation
    from ..evaluate.suites import parse_spec

    target = load_target(run_dir, device=device)
    x, y = target.test_images(scale.n_eval)
    if table.kind == "steps":
        return {}, _steps_row(row, target.model, x, y, scale)
    attack_columns = [c for c in table.columns if c.attack]
    specs = [parse_spec(scaled_attack(row_attack(c, row), scale)) for c in attack_columns]
    model = _model_for_eval(target.model, row)
    result = run_evaluation(
        model,
        x,
        y,
        specs,
        run_dir / "reproduce-eval",
        batch_size=batch_size,
        overwrite=overwrite,
        progress=False,
        curve_steps=0,
        eps_grid=(),
        plots=False,
        meta=target.report_meta(),
        stream=sys.stderr,
    )
    ours: dict[str, float | None] = {"clean": result.report["clean_accuracy"]}
    by_id = {row_["id"]: row_ for row_ in result.report["attacks"]}
    for column, spec in zip(attack_columns, specs, strict=True):
        ours[column.key] = by_id[spec.id]["robust_accuracy"]
    if any(c.key == "avg" for c in table.columns):
        averaged = [c.key for c in attack_columns if c.averaged]
        ours["avg"] = sum(ours[k] or 0.0 for k in averaged) / max(len(averaged), 1)
    return ours, {"specs": [s.id for s in specs]}


def _steps_row(row, model, x, y, scale: Scale) -> dict[str, Any]:
    from ..evaluate.steps import step_study

    tol = float(row.train["model_options"]["tol"])
    study = step_study(model, x[:16], y[:16], iterations=scale.pgd_iterations, per_image=False)
    data = study.to_dict()
    grids = _first_block_grids(data)
    paper = sonet_t3_grids().get(tol, {})
    return {"grids": grids, "paper_grids": {k: paper.get(k) for k in grids}, "study": data}


def _first_block_grids(study: dict[str, Any]) -> dict[int, list[float]]:
    """{PGD iterations: accepted grid} of the first ODE block, from a step study's dict."""
    blocks = study.get("blocks") or []
    if not blocks:
        return {}
    out = {}
    for entry in blocks[0].get("batch", []):
        if int(entry["iteration"]) > 0:  # 0 is the clean input; the paper starts at 1
            out[int(entry["iteration"])] = [float(t) for t in entry["grid"]]
    return out


def reproduce(
    name: str,
    *,
    scale: str = "smoke",
    out_dir: str | Path = "runs/reproduce",
    data_dir: str | None = None,
    device: str = "cpu",
    batch_size: int = 100,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    stream: TextIO | None = None,
) -> ReproduceResult:
    """Train and evaluate every row of table ``name`` at ``scale``; write
    ``OUT/NAME/reproduce.json`` and ``reproduce.md``; rows already done are reused. A folder
    holding other results, or rows trained with other settings (another scale, say), is
    refused unless ``overwrite``, which retrains and re-evaluates every row."""
    from ..outputs import OutputFolder
    from ..train.run_folder import refuse_changed_runs

    table = get_table(name)
    if scale not in SCALES:
        raise InputError(f"unknown scale '{scale}'; choose one of: {', '.join(SCALES)}")
    chosen = SMOKE if scale == "smoke" else FULL
    log = log or (lambda text: print(text, file=stream or sys.stderr, flush=True))
    folder = Path(out_dir) / table.name
    rows = rows_at(table, chosen)
    configs = [train_config(table, row, chosen, data_dir=data_dir, device=device) for row in rows]
    # before anything is trained: a resume would refuse a row of other settings only when it
    # reached it, without saying how to start over
    claim = OutputFolder(folder, "reproduce", overwrite=overwrite).claim()
    try:
        if not overwrite:
            slugs = [slug(row.label) for row in rows]
            refuse_changed_runs(folder, dict(zip(slugs, configs, strict=True)), "rows")
        return _reproduce_rows(
            claim, table, chosen, rows, configs, batch_size, device, overwrite, log
        )
    finally:
        claim.release()


def _reproduce_rows(claim, table, chosen, rows, configs, batch_size, device, overwrite, log):
    from ..train import train

    folder = claim.root
    start = time.perf_counter()
    results: list[RowResult] = []
    for i, (row, config) in enumerate(zip(rows, configs, strict=True), 1):
        t0 = time.perf_counter()
        run_dir = folder / slug(row.label)
        shown = row_label(row, chosen)
        log(f"[{i}/{len(rows)}] {shown}: training {config.model} ({config.defense})")
        resume = (run_dir / "config.json").exists() and not overwrite
        train(config, run_dir, resume=resume, overwrite=overwrite, progress=False)
        log(f"[{i}/{len(rows)}] {shown}: evaluating")
        ours, extra = _evaluate_row(table, row, run_dir, chosen, batch_size, device, overwrite)
        results.append(
            RowResult(
                row.label,
                row.group,
                str(run_dir),
                ours,
                dict(row.paper),
                time.perf_counter() - t0,
                extra,
                data_used(row, chosen),
                row_label(row, chosen),
            )
        )
    result = ReproduceResult(table, chosen, results, folder, time.perf_counter() - start)
    claim.write_json("reproduce.json", result.to_dict())
    claim.write_text("reproduce.md", format_table(result) + "\n")
    return result


def describe_tables() -> str:
    """``robustode reproduce --list``: one line per table."""
    lines = ["| table | paper | rows | smoke rows | what |", "|---|---|---:|---:|---|"]
    for name, table in PAPER_TABLES.items():
        lines.append(
            f"| {name} | {table.paper} Table {table.number} | {len(table.rows)} | "
            f"{len(rows_at(table, SMOKE))} | {table.title} |"
        )
    return "\n".join(lines)


__all__ = [
    "FULL",
    "SCALES",
    "SMOKE",
    "Column",
    "ReproduceResult",
    "describe_tables",
    "format_table",
    "get_table",
    "list_tables",
    "reproduce",
]
