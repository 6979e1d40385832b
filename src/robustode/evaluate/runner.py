"""Run attack specs over the first n test images, batch by batch, cached, resumable, shardable.

Every (attack, batch) result is written atomically to
``out_dir/points/<attack>/batch-<k>.json`` as soon as it is done; a rerun
into the same folder skips the batches already there, so an interrupted
evaluation goes on where it stopped. Each (attack, batch) is seeded from
(seed, k) alone (``seed + 1_000_003·k``; the spec's own ``seed=`` replaces
``seed``), so the numbers never depend on which batches ran in which
process. ``out_dir/eval_config.json`` records what the results depend on;
other settings into the same folder are refused unless ``overwrite``.

Under torchrun (``ctx.distributed``) rank r runs the batches with
k mod world_size = r; after a barrier every rank reads all batch files and
rank 0 writes the report and plots.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from ..attacks import Attack, attack_preset, create_attack
from ..io import write_json_atomic
from ..train.distributed import DistContext
from .curves import DEFAULT_EPS_GRID, EPS_CURVE_STEPS, CurvePlan, plan_curves, steps_curve
from .suites import AttackSpec

CONFIG_FILE = "eval_config.json"
POINTS_DIR = "points"
SEED_STRIDE = 1_000_003


@dataclass
class PointResults:
    """Per point of the n images: one attack's verdicts, gathered from its batch files."""

    success: torch.Tensor
    clean_correct: torch.Tensor
    queries: torch.Tensor
    first_adversarial: torch.Tensor | None
    seconds: float
    members: list[dict[str, Any]] | None = None

    @property
    def robust(self) -> torch.Tensor:
        return ~self.success


@dataclass
class EvaluationResult:
    """The report (``report.json``'s content) and every attack's per-point results."""

    report: dict[str, Any]
    out_dir: Path
    points: dict[str, PointResults] = field(default_factory=dict)

    def table(self) -> str:
        from .report import results_table

        return results_table(self.report)


def batch_seed(base: int, k: int) -> int:
    return int(base) + SEED_STRIDE * int(k)


def make_attack(spec: AttackSpec, seed: int, k: int) -> Attack:
    """The attack of batch ``k``, seeded from (the spec's seed or ``seed``, k)."""
    options = dict(spec.options)
    if "seed" in attack_preset(spec.name).options:
        options["seed"] = batch_seed(options.get("seed", seed), k)
    return create_attack(spec.name, **options)


def _inputs_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(x.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().long().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Progress:
    """A tqdm bar over (attack, batch) units on a terminal, else one line per attack."""

    def __init__(self, total: int, *, enabled: bool, bar: bool | None, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = enabled
        self.bar = None
        if enabled and (stream.isatty() if bar is None else bar) and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=stream, dynamic_ncols=True, leave=False)

    def start(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(name, refresh=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def attack_done(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_batch(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor
) -> dict[str, Any]:
    """Attack one batch; its per-point results as JSON-ready lists."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    started = time.perf_counter()
    result = attack.run(model, x, y)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - started
    first = result.first_adversarial
    members = result.extra.get("per_attack")
    return {
        "success": result.success.int().cpu().tolist(),
        "clean_correct": result.clean_correct.int().cpu().tolist(),
        "queries": result.queries.cpu().tolist(),
        "first_adversarial": None if first is None else first.cpu().tolist(),
        "seconds": seconds,
        "members": None
        if members is None
        else [{"attack": m["attack"], "broken": m["broken"]} for m in members],
    }


def _batch_path(out_dir: Path, spec: AttackSpec, k: int) -> Path:
    return out_dir / POINTS_DIR / spec.file_name / f"batch-{k:05d}.json"


def _read_batch(path: Path, spec: AttackSpec, k: int, count: int) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; delete it to recompute that batch") from None
    if data.get("attack") != spec.id or data.get("batch") != k or len(data["success"]) != count:
        raise ValueError(f"{path} does not hold batch {k} of '{spec.id}'; delete it to recompute")
    return data


def _gather(out_dir: Path, spec: AttackSpec, batches: list[tuple[int, int, int]]) -> PointResults:
    parts = [_read_batch(_batch_path(out_dir, spec, k), spec, k, b - a) for k, a, b in batches]
    firsts = [p["first_adversarial"] for p in parts]
    members: dict[str, int] | None = None
    if all(p.get("members") for p in parts):
        members = {}
        for p in parts:
            for m in p["members"]:
                members[m["attack"]] = members.get(m["attack"], 0) + int(m["broken"])
    return PointResults(
        success=torch.tensor([s for p in parts for s in p["success"]], dtype=torch.bool),
        clean_correct=torch.tensor(
            [s for p in parts for s in p["clean_correct"]], dtype=torch.bool
        ),
        queries=torch.tensor([q for p in parts for q in p["queries"]], dtype=torch.long),
        first_adversarial=None
        if any(f is None for f in firsts)
        else torch.tensor([v for f in firsts for v in f], dtype=torch.long),
        seconds=float(sum(p["seconds"] for p in parts)),
        members=None
        if members is None
        else [{"attack": name, "broken": broken} for name, broken in members.items()],
    )


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def _prepare_folder(
    out_dir: Path, config: dict[str, Any], *, resume: bool, overwrite: bool, ctx: DistContext
) -> None:
    """Refuse another command's results or other settings (unless ``overwrite``); clear stale
    points; write the config."""
    from ..outputs import refuse_other_kind

    refuse_other_kind(out_dir, "evaluate", overwrite=overwrite)
    path = out_dir / CONFIG_FILE
    clear = False
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        changed = _differences(old, config)
        if changed and not overwrite:
            raise ValueError(
                f"{out_dir} holds an evaluation with other settings ({', '.join(changed)} "
                "differ); pass --overwrite to replace it, or choose another --out"
            )
        clear = bool(changed) or not resume
    elif (out_dir / POINTS_DIR).exists():
        clear = True  # points without a config: not ours to trust
    ctx.barrier()  # every rank has checked before rank 0 changes anything
    if ctx.is_main:
        if clear:
            shutil.rmtree(out_dir / POINTS_DIR, ignore_errors=True)
        write_json_atomic(config, path)
    ctx.barrier()


def run_evaluation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: Sequence[AttackSpec],
    out_dir: str | Path,
    *,
    batch_size: int = 100,
    seed: int = 0,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool | None = None,
    ctx: DistContext | None = None,
    meta: dict[str, Any] | None = None,
    curve_steps: int = 100,
    eps_grid: Sequence[float] | None = DEFAULT_EPS_GRID,
    plots: bool = True,
    stream: TextIO | None = None,
) -> EvaluationResult:
    """Attack the images ``x`` (labels ``y``) with every spec and the curves' runs, write
    ``report.json``, ``report.md`` and (``plots``) the PNGs into ``out_dir``.

    ``progress``: True a tqdm bar, False one line per attack, None a bar only on a
    terminal. ``meta``: what the report says about the model and data (``source``,
    ``model_config``, ``weights_sha256``, ``data``, ...).
    """
    from .report import build_report, write_report

    ctx = ctx or DistContext(device=x.device)
    meta = dict(meta or {})
    specs = list(specs)
    if not specs:
        raise ValueError("no attacks to run")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    n = int(x.shape[0])
    if n < 1 or y.shape != (n,):
        raise ValueError(
            f"need n ≥ 1 images and n labels, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    out_dir = Path(out_dir)
    plan: CurvePlan = plan_curves(specs, curve_steps=curve_steps, eps_grid=eps_grid)
    extra = plan.extra_specs(specs)
    all_specs = specs + extra
    config = {
        "weights_sha256": meta.get("weights_sha256"),
        "data": meta.get("data"),
        "inputs_sha256": _inputs_sha256(x, y),
        "n": n,
        "batch_size": batch_size,
        "seed": seed,
        "attacks": [s.id for s in specs],
        "curve_attacks": [s.id for s in extra],
    }
    _prepare_folder(out_dir, config, resume=resume, overwrite=overwrite, ctx=ctx)

    batches = [(k, a, min(a + batch_size, n)) for k, a in enumerate(range(0, n, batch_size))]
    mine = [b for b in batches if b[0] % ctx.world_size == ctx.rank]
    todo = {
        s.id: [b for b in mine if not _batch_path(out_dir, s, b[0]).is_file()] for s in all_specs
    }
    show = _Progress(
        sum(len(v) for v in todo.values()),
        enabled=ctx.is_main,
        bar=progress,
        stream=stream or sys.stderr,
    )
    started = time.perf_counter()
    try:
        for index, spec in enumerate(all_specs, 1):
            show.start(spec.id)
            ran, seconds, robust, points = 0, 0.0, 0, 0
            for k, a, b in todo[spec.id]:
                attack = make_attack(spec, seed, k)
                data = _run_batch(model, attack, x[a:b], y[a:b])
                data = {"attack": spec.id, "batch": k, "start": a, "count": b - a, **data}
                write_json_atomic(data, _batch_path(out_dir, spec, k))
                ran += 1
                seconds += data["seconds"]
                robust += (b - a) - sum(data["success"])
                points += b - a
                show.step()
            cached = len(mine) - ran
            line = f"[{index}/{len(all_specs)}] {spec.id}: "
            if ran:
                line += f"robust {100 * robust / points:.2f} % on {points} points ({seconds:.1f} s)"
            else:
                line += "nothing to run"
            if cached:
                line += f"; {cached} batch(es) from an earlier run"
            show.attack_done(line)
    finally:
        show.close()
    ctx.barrier()

    points = {s.id: _gather(out_dir, s, batches) for s in all_specs}
    attacks = {s.id: s.create(seed=seed) for s in all_specs}
    curves = _curves(plan, points, attacks)
    report = build_report(
        specs=specs,
        attacks=attacks,
        points=points,
        curves=curves,
        config=config,
        meta=meta,
        seconds=time.perf_counter() - started,
    )
    if ctx.is_main:
        write_report(report, out_dir)
        if plots:
            from .plots import write_plots

            write_plots(report, out_dir)
    ctx.barrier()
    return EvaluationResult(report=report, out_dir=out_dir, points=points)


def _curves(
    plan: CurvePlan, points: dict[str, PointResults], attacks: dict[str, Attack]
) -> dict[str, Any]:
    curves: dict[str, Any] = {"steps": None, "eps": None}
    if plan.steps is not None:
        spec, k = plan.steps
        first = points[spec.id].first_adversarial
        if first is not None:
            attack = attacks[spec.id]
            curves["steps"] = {
                "attack": spec.id,
                "norm": attack.threat.norm,
                "eps": attack.threat.eps,
                "max_steps": k,
                "points": steps_curve(first, k, points[spec.id].robust),
            }
    if plan.eps:
        curves["eps"] = {
            "steps": EPS_CURVE_STEPS,
            "norm": "linf",
            "points": [
                {
                    "eps": eps,
                    "eps_255": eps * 255,
                    "attack": spec.id,
                    "robust_accuracy": int(points[spec.id].robust.sum())
                    / len(points[spec.id].robust),
                }
                for eps, spec in plan.eps
            ],
        }
    return curves


__all__ = ["EvaluationResult", "PointResults", "batch_seed", "make_attack", "run_evaluation"]
