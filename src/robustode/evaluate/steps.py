"""SONet Table 3: the adaptive step grids of ODE blocks along a PGD trajectory.

SONet §6.1.2 lists, for dopri5 at tol 0.1 / 0.01 / 0.001, the accepted time
grid of an ODE block (e.g. ``[0.0, 0.262, 1.0]``) after 1, 100 and 1000 PGD-L∞
iterations, and argues that a larger tolerance moves the grid more under
attack (changes of order 1e-2 at tol 0.1 against 1e-3 at tol 0.001).

:func:`step_study` reproduces that measurement for any model with
:class:`~robustode.nn.ODEBlock` s:

* **the trajectory** — plain projected steepest ascent on the attack's loss,
  x_{k+1} = Proj(x_k + α·sign ∇ Σ CE(f(x_k), y)), from x_0 = x (or the attack's
  random start), with no early stop and no best-iterate selection: the k-th
  entry is exactly the image after k PGD steps (Table 3's "PGD iterations").
  It is computed once, on the whole batch;
* **the batch view** — every block's accepted grid when the batch is evaluated
  together (the deployed behaviour: in batch step control one grid is shared
  by the batch), on the clean batch and at each requested iteration, with the
  forward NFE and the number of rejected steps;
* **the per-image view** — every image evaluated alone (batch of 1, forward
  only, on the same iterates), giving one grid per image and iteration; per
  block and iteration the mean number of steps, the mean/std of the step sizes
  (the first one, all of them and by position) and the mean absolute change of
  the grid points from the image's clean grid — the paper's "perturbation".

A grid is presented as the paper does: the start times of the accepted steps
followed by t1. The engine, like torchdiffeq, lets its last accepted step end
past t1 and interpolates back; ``overshoot`` is how far past t1 it ended.

Grid change between two grids: the mean of |a_i − b_i| over the interior
points (not 0, not t1) both grids have, position by position (a grid that
gained or lost a step is compared over the common prefix, and counted in
``steps_changed``); 0 when neither has an interior point.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.adaptive import solvers_replaced
from ..errors import InputError
from ..nn.ode_block import ODEBlock
from ..nn.solve_sites import named_solve_sites
from ..options import format_eps

DEFAULT_ITERATIONS = (1, 100, 1000)
STEPS_FILE = "steps.json"


# ----------------------------------------------------------------- blocks and grids
def find_ode_blocks(model: nn.Module) -> list[tuple[str, ODEBlock]]:
    """(module path, block) of every ODE block of ``model``, in module order.

    Raises one ValueError when there is none (there is no grid to study)."""
    blocks = named_solve_sites(model)
    if not blocks:
        raise InputError(
            f"the model ({type(model).__name__}) has no ODE blocks, so it has no step grids to "
            "study; give an ODE model (e.g. soblock, odenet, sonet)"
        )
    return blocks


def grid_of(steps: Sequence[tuple[float, float]], t1: float) -> tuple[list[float], float]:
    """The paper's grid (accepted step starts, then t1) and the last step's overshoot past t1."""
    if not steps:
        return [0.0, float(t1)], 0.0
    starts = [float(t0) for t0, _ in steps]
    end = float(steps[-1][0]) + float(steps[-1][1])
    return [*starts, float(t1)], max(0.0, end - float(t1))


def grid_change(a: Sequence[float], b: Sequence[float]) -> float:
    """Mean |a_i − b_i| over the interior points the two grids share by position."""
    inner_a, inner_b = list(a[1:-1]), list(b[1:-1])
    m = min(len(inner_a), len(inner_b))
    if m == 0:
        return 0.0
    return sum(abs(p - q) for p, q in zip(inner_a[:m], inner_b[:m], strict=True)) / m


def _block_grids(block: ODEBlock) -> list[dict[str, Any]]:
    """One entry per sample the latest forward integrated (one entry in batch step control)."""
    record = block.last_record
    if record is None:
        raise InputError("an ODE block was not run by the model's forward pass")
    t1 = block.solver.t1
    accepted, rejected = record.accepted_steps(), record.rejected_steps()
    if not record.per_sample:
        accepted, rejected = [accepted], [rejected]
    out = []
    for acc, rej in zip(accepted, rejected, strict=True):
        grid, overshoot = grid_of(acc, t1)
        out.append(
            {
                "grid": grid,
                "dt": [float(dt) for _, dt in acc],
                "overshoot": overshoot,
                "rejected": len(rej),
                "nfe_forward": record.nfe_forward,
            }
        )
    return out


@contextlib.contextmanager
def solver_tolerance(model: nn.Module, tol: float | None) -> Iterator[None]:
    """Temporarily set rtol = atol = ``tol`` on every adaptive ODE block (None: no change)."""
    if tol is None:
        yield
        return
    blocks = [block for _, block in find_ode_blocks(model)]
    tightened = [
        b.solver.replace(rtol=tol, atol=tol) if b.solver.adaptive else b.solver for b in blocks
    ]
    with solvers_replaced(blocks, tightened):
        yield


# ----------------------------------------------------------------- trajectory
@dataclass(frozen=True)
class TrajectorySettings:
    """What the trajectory follows: the attack preset's threat model, step and loss."""

    attack: str
    norm: str
    eps: float
    step_size: float
    random_start: bool
    loss: str
    seed: int

    @classmethod
    def from_attack(
        cls, attack: str = "pgd1000-linf", *, eps: float | None = None, step_size=None
    ) -> TrajectorySettings:
        from ..attacks import GradientAttack, create_attack

        overrides: dict[str, Any] = {}
        if eps is not None:
            overrides["eps"] = eps
        if step_size is not None:
            overrides["step_size"] = step_size
        built = create_attack(attack, **overrides)
        if not isinstance(built, GradientAttack):
            raise InputError(
                f"attack '{attack}' is not a projected-gradient attack; the step study follows "
                "a PGD trajectory (e.g. pgd1000-linf, pgd1000-l2, ifgsm20)"
            )
        return cls(
            attack=attack,
            norm=built.threat.norm,
            eps=float(built.threat.eps),
            step_size=float(built.step_size),
            random_start=built.random_start,
            loss=built.loss_name,
            seed=built.seed,
        )

    def build(self):
        from ..attacks import create_attack

        return create_attack(self.attack, eps=self.eps, step_size=self.step_size)

    def describe(self, iterations: int | None = None) -> str:
        """``PGD-10 L∞ ε=0.031, step 0.003, … (pgd1000-linf's settings)`` for a trajectory
        of ``iterations``; without it, the preset's name leads."""
        symbol = "L∞" if self.norm == "linf" else "L2"
        start = "random start" if self.random_start else "no random start"
        settings = (
            f"{symbol} ε={format_eps(self.eps, self.norm, 6)}, step "
            f"{format_eps(self.step_size, self.norm)}, {self.loss} loss, {start}"
        )
        if iterations is None:
            return f"{self.attack}: {settings}"
        return f"PGD-{iterations} {settings} ({self.attack}'s settings)"


def pgd_trajectory(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    iterations: Sequence[int],
    settings: TrajectorySettings | None = None,
) -> dict[int, torch.Tensor]:
    """The PGD iterates x_k for every k in ``iterations`` (plus x_0 = the start at k = 0).

    x_{k+1} = Proj(x_k + α·direction(∇ Σ loss(f(x_k), y))) with the attack's threat model,
    step α, loss and start; no early stop, no best-iterate selection. The model runs in
    eval mode (its flags are restored afterwards); entry 0 is the start (x without a random
    start)."""
    from ..attacks import model_mode

    iterations = _check_iterations(iterations)
    settings = settings or TrajectorySettings.from_attack()
    attack = settings.build()
    wanted = set(iterations)
    generator = torch.Generator(device=x.device).manual_seed(settings.seed)
    x = x.detach()
    with model_mode(model, "eval"):
        delta = attack.init_delta(x, generator)
        x_k = attack.threat.project(x + delta, x)
        out = {0: x_k.clone()}
        for k in range(1, max(iterations) + 1):
            x_k = x_k.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = attack.loss(model(x_k), y).sum()
                (grad,) = torch.autograd.grad(loss, x_k)
            x_k = attack.threat.project(
                x_k.detach() + settings.step_size * attack.direction(grad), x
            )
            if k in wanted:
                out[k] = x_k.clone()
    return out


def _check_iterations(iterations: Sequence[int]) -> tuple[int, ...]:
    values = tuple(iterations)
    if not values:
        raise InputError("give at least one PGD iteration count")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"PGD iteration counts must be integers ≥ 1, got {k!r}")
    return tuple(sorted(set(values)))


# ----------------------------------------------------------------- the study
def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, math.sqrt(var)


def _spread(grids: list[dict[str, Any]], clean: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image statistics at one iteration (``grids`` and ``clean``: one entry per image)."""
    steps = [len(g["dt"]) for g in grids]
    first = [g["dt"][0] for g in grids if g["dt"]]
    all_dt = [dt for g in grids for dt in g["dt"]]
    longest = max(steps, default=0)
    by_pos = [[g["dt"][i] for g in grids if len(g["dt"]) > i] for i in range(longest)]
    changes = [grid_change(g["grid"], c["grid"]) for g, c in zip(grids, clean, strict=True)]
    first_changes = [
        abs(g["dt"][0] - c["dt"][0])
        for g, c in zip(grids, clean, strict=True)
        if g["dt"] and c["dt"]
    ]
    changed = sum(len(g["dt"]) != len(c["dt"]) for g, c in zip(grids, clean, strict=True))
    first_mean, first_std = _mean_std(first)
    dt_mean, dt_std = _mean_std(all_dt)
    change_mean, change_std = _mean_std(changes)
    return {
        "mean_steps": sum(steps) / len(steps),
        "first_dt_mean": first_mean,
        "first_dt_std": first_std,
        "dt_mean": dt_mean,
        "dt_std": dt_std,
        "dt_mean_by_position": [_mean_std(v)[0] for v in by_pos],
        "dt_std_by_position": [_mean_std(v)[1] for v in by_pos],
        "grid_change_mean": change_mean,
        "grid_change_std": change_std,
        "grid_change_max": max(changes, default=0.0),
        "first_dt_change_mean": _mean_std(first_changes)[0],
        "steps_changed": changed,
        "mean_nfe_forward": sum(g["nfe_forward"] for g in grids) / len(grids),
        "mean_rejected": sum(g["rejected"] for g in grids) / len(grids),
        "grids": [g["grid"] for g in grids],
        "overshoot": [g["overshoot"] for g in grids],
    }


@dataclass
class StepStudy:
    """Step grids of every ODE block, clean and along one PGD trajectory (:func:`step_study`)."""

    attack: dict[str, Any]
    iterations: list[int]
    n_images: int
    per_image: bool
    tol: float | None
    blocks: list[dict[str, Any]]
    accuracy: dict[int, float]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "iterations": self.iterations,
            "n_images": self.n_images,
            "per_image": self.per_image,
            "tol": self.tol,
            "accuracy": {str(k): v for k, v in self.accuracy.items()},
            "blocks": self.blocks,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def step_study(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    iterations: Sequence[int] = DEFAULT_ITERATIONS,
    attack: str = "pgd1000-linf",
    eps: float | None = None,
    step_size: float | None = None,
    per_image: bool = True,
    tol: float | None = None,
) -> StepStudy:
    """Table 3 for ``model`` on the batch (x, y): see the module docstring.

    ``attack`` names a gradient-attack preset whose threat model, step size, loss and
    start the trajectory follows (``eps``/``step_size`` override them; its own step
    count does not matter: the trajectory runs to max(iterations)). ``tol`` sets
    rtol = atol of every adaptive block for this study only (restored afterwards).
    """
    from ..nn.solve_sites import discover_sites, intercepting
    from .inputs import check_inputs_fit_model

    check_inputs_fit_model(model, x, y)
    # odeint calls inside any model (torchdiffeq's or robustode's) are solve sites too
    with intercepting(model):
        discover_sites(model, x)
        return _step_study(
            model,
            x,
            y,
            iterations=iterations,
            attack=attack,
            eps=eps,
            step_size=step_size,
            per_image=per_image,
            tol=tol,
        )


def _step_study(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    iterations: Sequence[int] = DEFAULT_ITERATIONS,
    attack: str = "pgd1000-linf",
    eps: float | None = None,
    step_size: float | None = None,
    per_image: bool = True,
    tol: float | None = None,
) -> StepStudy:
    from ..attacks import model_mode

    start = time.perf_counter()
    blocks = find_ode_blocks(model)
    iterations = _check_iterations(iterations)
    if x.dim() < 2 or x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise InputError("x must be a non-empty batch and y one label per image")
    if tol is not None and not any(b.solver.adaptive for _, b in blocks):
        raise InputError(
            "a tolerance applies to adaptive solvers only; this model's ODE blocks are all "
            "fixed-step (" + ", ".join(b.solver.describe() for _, b in blocks) + ")"
        )
    settings = TrajectorySettings.from_attack(attack, eps=eps, step_size=step_size)
    with solver_tolerance(model, tol), model_mode(model, "eval"):
        solvers = [(name, b.solver) for name, b in blocks]
        iterates = pgd_trajectory(model, x, y, iterations, settings)
        iterates[0] = x.detach()  # the clean row is the image itself, even after a random start
        ks = [0, *iterations]
        batch: dict[int, list[list[dict[str, Any]]]] = {}
        accuracy: dict[int, float] = {}
        with torch.no_grad():
            for k in ks:
                logits = model(iterates[k])
                accuracy[k] = float((logits.argmax(1) == y).float().mean())
                batch[k] = [_block_grids(b) for _, b in blocks]
            single: dict[int, list[list[dict[str, Any]]]] = {}
            if per_image:
                for k in ks:
                    rows: list[list[dict[str, Any]]] = [[] for _ in blocks]
                    for i in range(x.shape[0]):
                        model(iterates[k][i : i + 1])
                        for j, (_, b) in enumerate(blocks):
                            rows[j].append(_block_grids(b)[0])
                    single[k] = rows

    out_blocks = []
    for j, (name, solver) in enumerate(solvers):
        entry: dict[str, Any] = {
            "name": name,
            "solver": solver.describe(),
            "method": solver.method,
            "rtol": solver.rtol if solver.adaptive else None,
            "atol": solver.atol if solver.adaptive else None,
            "adaptive": solver.adaptive,
            "step_control": solver.step_control if solver.adaptive else None,
            "t1": solver.t1,
            "batch": [],
            "per_image": [],
        }
        for k in ks:
            views = batch[k][j]
            clean = batch[0][j]
            if len(views) == 1:  # one grid shared by the batch
                v = views[0]
                row = {
                    "iteration": k,
                    "grid": v["grid"],
                    "dt": v["dt"],
                    "overshoot": v["overshoot"],
                    "nfe_forward": v["nfe_forward"],
                    "rejected": v["rejected"],
                    "grid_change": grid_change(v["grid"], clean[0]["grid"]),
                    "steps_changed": len(v["dt"]) != len(clean[0]["dt"]),
                }
            else:  # per-sample step control: one grid per image even in the batch
                row = {
                    "iteration": k,
                    "grids": [v["grid"] for v in views],
                    "overshoot": [v["overshoot"] for v in views],
                    "nfe_forward": views[0]["nfe_forward"],
                    "rejected": [v["rejected"] for v in views],
                    "grid_change": _mean_std(
                        [
                            grid_change(v["grid"], c["grid"])
                            for v, c in zip(views, clean, strict=True)
                        ]
                    )[0],
                    "steps_changed": sum(
                        len(v["dt"]) != len(c["dt"]) for v, c in zip(views, clean, strict=True)
                    ),
                }
            entry["batch"].append(row)
            if per_image:
                entry["per_image"].append({"iteration": k, **_spread(single[k][j], single[0][j])})
        out_blocks.append(entry)

    notes = []
    fixed = [b["name"] for b in out_blocks if not b["adaptive"]]
    if fixed:
        notes.append(
            f"fixed-step block(s) {', '.join(fixed)}: the grid is set by the solver, not by "
            "the input, so it cannot move under attack"
        )
    if any(b["step_control"] == "per_sample" for b in out_blocks):
        notes.append(
            "per-sample step control: every image has its own grid even in a batch "
            "(the batch view lists one grid per image)"
        )
    return StepStudy(
        attack={
            "name": attack,
            "description": settings.describe(max(ks)),
            **_settings_dict(settings),
        },
        iterations=list(iterations),
        n_images=int(x.shape[0]),
        per_image=per_image,
        tol=tol,
        blocks=out_blocks,
        accuracy=accuracy,
        seconds=time.perf_counter() - start,
        notes=notes,
    )


def _settings_dict(s: TrajectorySettings) -> dict[str, Any]:
    return {
        "norm": s.norm,
        "eps": s.eps,
        "step_size": s.step_size,
        "random_start": s.random_start,
        "loss": s.loss,
    }


# ----------------------------------------------------------------- output
def _fmt_grid(grid: Sequence[float]) -> str:
    return "[" + ", ".join(f"{t:.3f}" for t in grid) + "]"


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def _row(cells: Sequence[str]) -> str:
    """One Markdown table row; a '|' inside a cell (``|Δgrid|``) is escaped, so every row
    has as many cells as the header."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def steps_markdown(studies: StepStudy | Sequence[StepStudy]) -> str:
    """``steps.md``: a title naming the trajectory actually run (its iteration count, not the
    preset's name alone), then :func:`format_table`."""
    if isinstance(studies, StepStudy):
        studies = [studies]
    first = studies[0]
    return (
        f"# Adaptive step grids along {first.attack['description']} (SONet Table 3's layout)"
        f"\n\n{format_table(studies)}\n"
    )


def format_table(studies: StepStudy | Sequence[StepStudy]) -> str:
    """Table 3's layout (Solver | PGD iterations | adaptive steps) plus NFE, rejected steps,
    the batch grid's change from clean and, when measured, the per-image spread."""
    if isinstance(studies, StepStudy):
        studies = [studies]
    per_image = any(s.per_image for s in studies)
    multi_block = any(len(s.blocks) > 1 for s in studies)
    head = ["Solver", "PGD iterations", "Adaptive steps", "overshoot", "NFE", "rejected", "|Δgrid|"]
    if multi_block:
        head.insert(0, "Block")
    head.append("acc")
    if per_image:
        head += ["1×1: steps", "first dt (mean ± std)", "|Δgrid| mean ± std", "#steps changed"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for study in studies:
        for block in study.blocks:
            spreads = {r["iteration"]: r for r in block["per_image"]}
            for i, row in enumerate(block["batch"]):
                k = row["iteration"]
                solver = ""
                if i == 0:
                    solver = block["solver"] + (
                        "" if block["adaptive"] else " (fixed: cannot move)"
                    )
                if "grid" in row:
                    grid, over = _fmt_grid(row["grid"]), f"{row['overshoot']:.3f}"
                    rejected = str(row["rejected"])
                    changed = "" if k == 0 or not row["steps_changed"] else " (#steps changed)"
                else:
                    grid = _fmt_grid(row["grids"][0]) + " (image 0)"
                    over = f"{row['overshoot'][0]:.3f}"
                    rejected = str(sum(row["rejected"]))
                    changed = (
                        f" ({row['steps_changed']} changed)" if k and row["steps_changed"] else ""
                    )
                cells = [
                    solver,
                    "0 (clean)" if k == 0 else str(k),
                    grid,
                    over,
                    str(row["nfe_forward"]),
                    rejected,
                    ("–" if k == 0 else f"{row['grid_change']:.2e}") + changed,
                ]
                if multi_block:
                    cells.insert(0, block["name"] if i == 0 else "")
                cells.append(f"{100 * study.accuracy[k]:.1f}%")
                if per_image:
                    s = spreads.get(k)
                    if s is None:
                        cells += ["", "", "", ""]
                    else:
                        cells += [
                            f"{s['mean_steps']:.2f}",
                            f"{_fmt(s['first_dt_mean'], '.3f')} ± {_fmt(s['first_dt_std'], '.3f')}",
                            "–"
                            if k == 0
                            else f"{s['grid_change_mean']:.2e} ± {s['grid_change_std']:.1e}",
                            "–" if k == 0 else f"{s['steps_changed']}/{study.n_images}",
                        ]
                lines.append(_row(cells))
    first = studies[0]
    notes = [
        f"attack: {first.attack['description']}; {first.n_images} image(s)",
        "grid: accepted step starts, then t1; overshoot: how far the last accepted step ended "
        "past t1 (the output is interpolated back to t1)",
        "|Δgrid|: mean |change| of the interior grid points from the clean grid (common prefix "
        "when the number of steps changed)",
    ]
    if per_image:
        notes.append("1×1: every image evaluated alone (batch of 1) on the same PGD iterates")
    for study in studies:
        notes += [n for n in study.notes if n not in notes]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def studies_to_dict(studies: Sequence[StepStudy], **extra: Any) -> dict[str, Any]:
    """The JSON document of one ``robustode steps`` call."""
    return {**extra, "studies": [s.to_dict() for s in studies]}


def steps_fingerprint(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any]
) -> dict[str, Any]:
    """What a step study depends on, read from the model, the images and the settings."""
    from ..fingerprint import inputs_sha256, model_fingerprint, versions

    return {
        "format": "robustode-steps-1",
        "model": model_fingerprint(model),
        "data": {"sha256": inputs_sha256(x, y), "n": int(x.shape[0])},
        "settings": settings,
        "versions": versions(),
    }


def run_step_studies(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    out_dir: str | Path,
    *,
    iterations: Sequence[int] = DEFAULT_ITERATIONS,
    attack: str = "pgd1000-linf",
    eps: float | None = None,
    step_size: float | None = None,
    per_image: bool = True,
    tols: Sequence[float] | None = None,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
    progress: Any = None,
) -> list[StepStudy]:
    """:func:`step_study` once per tolerance in ``tols`` (once, at the model's own, for None),
    written to ``out_dir`` as ``steps.json``, ``steps.md`` and ``steps.png``. The folder is
    claimed first (one writer; a study of another model, data or settings there is refused
    unless ``overwrite``), before anything runs."""
    from ..nn.solve_sites import discover_sites, intercepting
    from .inputs import check_inputs_fit_model

    check_inputs_fit_model(model, x, y)
    with intercepting(model):
        discover_sites(model, x)
        find_ode_blocks(model)
        return _run_step_studies(
            model, x, y, out_dir, iterations=iterations, attack=attack, eps=eps,
            step_size=step_size, per_image=per_image, tols=tols, overwrite=overwrite,
            meta=meta, progress=progress,
        )  # fmt: skip


def _run_step_studies(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    out_dir: str | Path,
    *,
    iterations: Sequence[int],
    attack: str,
    eps: float | None,
    step_size: float | None,
    per_image: bool,
    tols: Sequence[float] | None,
    overwrite: bool,
    meta: dict[str, Any] | None,
    progress: Any,
) -> list[StepStudy]:
    from ..outputs import OutputFolder

    TrajectorySettings.from_attack(attack, eps=eps, step_size=step_size)
    settings = {
        "iterations": sorted(set(_check_iterations(iterations))),
        "attack": attack,
        "eps": eps,
        "step_size": step_size,
        "tol": None if tols is None else [float(t) for t in tols],
        "per_image": per_image,
    }
    fingerprint = steps_fingerprint(model, x, y, settings)
    with OutputFolder(out_dir, "steps", overwrite=overwrite) as folder:
        folder.refuse_other_settings(STEPS_FILE, fingerprint, what="a step study")
        if progress is not None:
            progress(
                f"steps: {x.shape[0]} image(s), PGD to {max(settings['iterations'])} iterations"
                + (f", tol {', '.join(f'{t:g}' for t in tols)}" if tols else "")
                + " ..."
            )
        studies = [
            step_study(
                model, x, y, iterations=iterations, attack=attack, eps=eps,
                step_size=step_size, per_image=per_image, tol=tol,
            )
            for tol in (tols or [None])
        ]  # fmt: skip
        document = studies_to_dict(
            studies,
            fingerprint=fingerprint,
            settings={**settings, "n": int(x.shape[0])},
            **(meta or {}),
        )
        folder.write_json(STEPS_FILE, document)
        folder.write_text("steps.md", steps_markdown(studies))
        plot_steps(studies, folder.root / "steps.png", folder=folder)
    return studies


def plot_steps(studies: Sequence[StepStudy], path, *, folder: Any = None) -> None:
    """Write ``steps.png``: per study and block, the grid points per iteration (batch grid as
    ticks, per-image grid points faint) and the mean grid change vs iteration."""
    from .plots import pyplot, save_png

    plt = pyplot()
    panels = [b for s in studies for b in s.blocks]
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 2.6 * len(panels) + 0.6), squeeze=False)
    for block, (ax_grid, ax_change) in zip(panels, axes, strict=True):
        ks = [r["iteration"] for r in block["batch"]]
        spreads = {r["iteration"]: r for r in block["per_image"]}
        for row_i, row in enumerate(block["batch"]):
            k = row["iteration"]
            if k in spreads:
                pts = [t for g in spreads[k]["grids"] for t in g]
                ax_grid.scatter(
                    pts, [row_i + 0.25] * len(pts), marker="|", s=80, alpha=0.25, color="tab:orange"
                )
            grids = [row["grid"]] if "grid" in row else row["grids"]
            for g in grids:
                ax_grid.scatter(g, [row_i] * len(g), marker="|", s=250, color="tab:blue")
        ax_grid.set_yticks(range(len(ks)))
        ax_grid.set_yticklabels(["clean" if k == 0 else f"PGD {k}" for k in ks])
        ax_grid.set_xlim(-0.03, block["t1"] * 1.03)
        ax_grid.set_xlabel("t (blue: batch grid; orange: images alone)")
        ax_grid.set_title(f"{block['name']}: {block['solver']}", fontsize=9)
        later = [r for r in block["batch"] if r["iteration"] > 0]
        xs = [r["iteration"] for r in later]
        ax_change.plot(
            xs, [max(r["grid_change"] or 0.0, 1e-12) for r in later], "o-", label="batch grid"
        )
        if spreads:
            rows = [spreads[k] for k in xs]
            ax_change.errorbar(
                xs,
                [max(r["grid_change_mean"] or 0.0, 1e-12) for r in rows],
                yerr=[r["grid_change_std"] or 0.0 for r in rows],
                fmt="s--",
                capsize=3,
                label="images alone (mean ± std)",
            )
        ax_change.set_xscale("log")
        ax_change.set_yscale("log")
        ax_change.set_xlabel("PGD iterations")
        ax_change.set_ylabel("mean |Δ grid point|")
        ax_change.legend(fontsize=8)
        if not block["adaptive"]:
            ax_change.set_title("fixed-step: the grid cannot move", fontsize=9)
    fig.suptitle(f"Adaptive step grids along {studies[0].attack['description']}", fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=110, folder=folder)
