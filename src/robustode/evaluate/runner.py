"""Run attack specs over the first n test images, batch by batch, cached, resumable, shardable.

Every (attack, batch) result is written atomically to
``out_dir/points/<attack>/batch-<k>.json`` as soon as it is done, with the
fingerprint of what produced it (:mod:`robustode.evaluate.batches`): the model
as it runs (weights, config, every ODE block's solver — read from the model,
never from the caller's ``meta``), the exact images and labels, the attack's
resolved settings and the versions. A rerun into the same folder reuses a
batch file only when its fingerprint, checksum and content check out; any
other file is named in one line and recomputed. Each (attack, batch) is seeded
from (seed, k) alone (``seed + 1_000_003·k``; the spec's own ``seed=``
replaces ``seed``), so the numbers never depend on which batches ran in which
process.

The output folder is claimed through :class:`~robustode.outputs.OutputFolder`:
one evaluation at a time, and only robustode's own files are ever replaced.
``out_dir/eval_config.json`` records the fingerprint; an evaluation of another
model, data or attack list in the same folder is refused unless ``overwrite``,
and then only what the change invalidates is recomputed — the message says what
changed.

Under torchrun (``ctx.distributed``) rank r runs the batches with
k mod world_size = r; after a barrier every rank reads all batch files and
rank 0 writes the report and plots.
"""

from __future__ import annotations

import functools
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from ..attacks import Attack, attack_preset, create_attack
from ..errors import FolderError, InputError, spell
from ..fingerprint import (
    changes,
    digest,
    inputs_sha256,
    model_fingerprint,
    settings_of,
    versions,
)
from ..io import read_bytes_limited, read_json_limited
from ..outputs import OutputFolder
from ..train.distributed import DistContext
from . import batches
from .curves import EPS_CURVE_STEPS, CurvePlan, plan_curves, steps_curve
from .inputs import check_inputs_fit_model
from .suites import AttackSpec, parse_spec

CONFIG_FILE = "eval_config.json"
POINTS_DIR = "points"
ADVERSARIAL_FILE_BYTES = 8 << 30
SEED_STRIDE = 1_000_003
EVAL_FORMAT = "robustode-eval-2"


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
    # per attack id, the n points each attack returned (with save_adversarials)
    adversarials: dict[str, torch.Tensor] | None = None

    def worst_case_adversarials(self, x: torch.Tensor, attacks: Sequence[str]) -> torch.Tensor:
        """Per point, the image of the first of ``attacks`` that broke it; the clean image
        where none did (AutoAttack's ``x_adv``). Needs ``save_adversarials``."""
        if self.adversarials is None:
            raise InputError("the evaluation kept no adversarial images: save_adversarials=True")
        out = x.detach().cpu().clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool)
        for attack in attacks:
            broken = self.points[attack].success.cpu() & ~done
            out[broken] = self.adversarials[attack][broken]
            done |= broken
        return out

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


class _Progress:
    """A tqdm bar over (attack, batch) units on a terminal; elsewhere a start line, a
    heartbeat every minute (what runs, how far, the time left) and one line per attack."""

    def __init__(self, total: int, *, enabled: bool, bar: bool | None, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = enabled
        self.bar = None
        self.beat = None
        self.total, self.done, self.name = total, 0, ""
        if enabled and (stream.isatty() if bar is None else bar) and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=stream, dynamic_ncols=True, leave=False)
        elif enabled and total:
            from ..heartbeat import Heartbeat

            print(f"evaluating: {total} (attack, batch) run(s) to do", file=stream, flush=True)
            self.beat = Heartbeat("evaluate", total=total, stream=stream).__enter__()

    def start(self, name: str) -> None:
        self.name = name
        if self.beat is not None:
            self.beat.update(self.done, f"running {name}")
        if self.bar is not None:
            self.bar.set_description(name, refresh=True)

    def step(self) -> None:
        self.done += 1
        if self.beat is not None:
            self.beat.update(self.done, f"running {self.name}")
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
        if self.beat is not None:
            self.beat.__exit__(None, None, None)
            self.beat = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


Slice = tuple[int, int, int]  # (k, start, stop) of batch k


def short_reach_notes(attacks: Sequence[Attack], ids: Sequence[str]) -> list[str]:
    """A note for every L∞ gradient attack whose steps cannot reach the boundary of its
    ε-ball (steps · step_size < ε, without a random start to begin near it): its robust
    accuracy is an overstatement by construction — e.g. a preset's step kept while ε was
    raised (pgd20-linf keeps SONet's step 0.003, made for ε 0.031)."""
    notes = []
    for attack, attack_id in zip(attacks, ids, strict=True):
        steps, step = getattr(attack, "steps", None), getattr(attack, "step_size", None)
        threat = getattr(attack, "threat", None)
        if not (isinstance(steps, int) and isinstance(step, float) and threat is not None):
            continue
        if threat.norm != "linf" or getattr(attack, "random_start", False):
            continue
        if steps * step < threat.eps * (1 - 1e-9):
            notes.append(
                f"{attack_id}: {steps} steps of {step:.4g} move at most {steps * step:.4g}, "
                f"less than ε = {threat.eps:.4g}: it cannot reach the ε-ball's boundary, so its "
                "robust accuracy overstates the model's; give step_size with eps "
                f"(e.g. step_size={2.5 * threat.eps / steps:.3g})"
            )
    return notes


def _batch_rel(spec: AttackSpec, k: int) -> str:
    return f"{POINTS_DIR}/{spec.file_name}/batch-{k:05d}.json"


def _adversarial_rel(spec: AttackSpec, k: int) -> str:
    return f"{POINTS_DIR}/{spec.file_name}/batch-{k:05d}.adv.safetensors"


def _write_adversarials(
    folder: OutputFolder, spec: AttackSpec, k: int, x_adv: torch.Tensor, fingerprint: str
) -> None:
    from safetensors.torch import save as save_safetensors

    data = save_safetensors({"x_adv": x_adv.contiguous()}, metadata={"fingerprint": fingerprint})
    folder.write_bytes(_adversarial_rel(spec, k), data)


def _read_adversarials(
    folder: OutputFolder, spec: AttackSpec, k: int, fingerprint: str, count: int
) -> torch.Tensor | None:
    """A batch's saved adversarial images, or None when absent, foreign or not this batch's."""
    import json as _json

    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    path = folder.root / _adversarial_rel(spec, k)
    if not path.is_file() or not folder.owns(path):
        return None
    try:
        data = read_bytes_limited(path, ADVERSARIAL_FILE_BYTES, what="adversarial images")
        size = int.from_bytes(data[:8], "little")
        header = _json.loads(data[8 : 8 + size])
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, OSError, InputError):
        return None
    x_adv = tensors.get("x_adv")
    meta = header.get("__metadata__") or {}
    if x_adv is None or meta.get("fingerprint") != fingerprint or x_adv.shape[0] != count:
        return None
    return x_adv


def _as_specs(specs: Sequence[AttackSpec | str]) -> list[AttackSpec]:
    if isinstance(specs, str):
        raise InputError(
            "specs must be a list of attack specs, e.g. ['pgd20-linf', 'apgd-ce'] "
            "(resolve_attacks(None, 'a,b') splits a comma list)"
        )
    return [s if isinstance(s, AttackSpec) else parse_spec(str(s)) for s in specs]


class _Batches:
    """This evaluation's batch files: their fingerprints, and reading them with validation."""

    def __init__(
        self,
        folder: OutputFolder,
        specs: list[AttackSpec],
        slices: list[Slice],
        *,
        model_digest: str,
        data_digest: str,
        seed: int,
    ) -> None:
        self.folder = folder
        self.specs = specs
        self.slices = slices
        vers = versions()
        self.fingerprints = {
            (spec.id, k): digest(
                {
                    "model": model_digest,
                    "data": data_digest,
                    "slice": [k, a, b],
                    "attack": settings_of(make_attack(spec, seed, k)),
                    "versions": vers,
                }
            )
            for spec in specs
            for k, a, b in slices
        }

    def path(self, spec: AttackSpec, k: int) -> Path:
        return self.folder.root / _batch_rel(spec, k)

    def load(self, spec: AttackSpec, sl: Slice) -> tuple[dict[str, Any] | None, str | None]:
        """(content, None) for a file that may be used; (None, None) when there is none;
        (None, why) for one that must be recomputed."""
        k, a, b = sl
        path = self.path(spec, k)
        if not (path.exists() or path.is_symlink()):
            return None, None
        if not self.folder.owns(path):
            return None, "robustode did not write it"
        data, why = batches.read(path)
        if why is None:
            why = batches.problem(
                data,
                fingerprint=self.fingerprints[(spec.id, k)],
                attack=spec.id,
                batch=k,
                start=a,
                count=b - a,
            )
        return (data, None) if why is None else (None, why)


def _run_batch(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Attack one batch: the points it returned, and its per-point results as JSON-ready
    lists."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    started = time.perf_counter()
    result = attack.run(model, x, y)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - started
    first = result.first_adversarial
    members = result.extra.get("per_attack")
    return result.x_adv.detach().to("cpu", torch.float32), {
        "success": result.success.int().cpu().tolist(),
        "clean_correct": result.clean_correct.int().cpu().tolist(),
        "queries": result.queries.cpu().tolist(),
        "first_adversarial": None if first is None else first.cpu().tolist(),
        "seconds": seconds,
        "members": None
        if members is None
        else [{"attack": m["attack"], "broken": int(m["broken"])} for m in members],
    }


def _point_results(parts: list[dict[str, Any]]) -> PointResults:
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


def _prepare_folder(
    folder: OutputFolder,
    config: dict[str, Any],
    layout: _Batches,
    *,
    resume: bool,
    overwrite: bool,
) -> list[str]:
    """On the main process, with the folder claimed: refuse another evaluation's results
    (unless ``overwrite``) and a user's files where batch files go; drop what the change
    invalidates; write the new config. Returns lines to show the user."""
    lines: list[str] = []
    path = folder.root / CONFIG_FILE
    old: Any = None
    if path.exists():
        try:
            old = read_json_limited(path, what="evaluation config")
        except InputError as exc:
            old = {"unreadable": str(exc)}
    changed = old is not None and old != config
    wanted = {spec.file_name for spec in layout.specs}
    points = folder.root / POINTS_DIR
    if points.is_dir():
        for entry in sorted(points.iterdir()):
            if entry.is_dir() and (not resume or entry.name not in wanted):
                folder.remove_tree(entry)
    if changed:
        what = "; ".join(changes(old, config)) or "unreadable"
        if not overwrite:
            raise FolderError(
                f"{folder.root} holds an evaluation of other settings ({what}); pass "
                f"{spell('overwrite')} to replace it (batches whose model, data and attack "
                f"are unchanged are reused), or choose another folder with {spell('out')}"
            )
        # what the change invalidates goes now, said once, rather than file by file
        kept = dropped = 0
        current = {(spec.file_name, f"batch-{k:05d}.json") for spec in layout.specs
                   for k, _, _ in layout.slices}  # fmt: skip
        by_path = {layout.path(spec, sl[0]): (spec, sl) for spec in layout.specs
                   for sl in layout.slices}  # fmt: skip
        for path in sorted(points.rglob("batch-*.json")) if points.is_dir() else []:
            if not folder.owns(path):
                continue
            if (path.parent.name, path.name) in current and layout.load(*by_path[path])[0]:
                kept += 1
            else:
                folder.remove(path)
                dropped += 1
        lines.append(
            f"replacing the evaluation in {folder.root}: {what}; {kept} cached batch(es) "
            f"stay valid, {dropped} are recomputed"
        )
    foreign = [
        layout.path(spec, k)
        for spec in layout.specs
        for k, _, _ in layout.slices
        if layout.path(spec, k).exists() and not folder.owns(layout.path(spec, k))
    ]
    if foreign:
        raise FolderError(
            f"{foreign[0]} (and {len(foreign) - 1} more) was not written by robustode, and "
            "robustode never replaces a file it did not write; move it away, or choose "
            f"another folder with {spell('out')}"
            if len(foreign) > 1
            else f"{foreign[0]} was not written by robustode, and robustode never replaces a "
            f"file it did not write; move it away, or choose another folder with {spell('out')}"
        )
    folder.write_json(CONFIG_FILE, config)
    return lines


def _clean_disagreements(layout: _Batches, sl: Slice, run: str) -> list[tuple[AttackSpec, str]]:
    """Cached batch files of slice ``sl`` whose clean verdicts disagree with the ones
    computed in this run (or, with none computed, with each other): (spec, why)."""
    k = sl[0]
    files = []
    for spec in layout.specs:
        data, _ = layout.load(spec, sl)
        if data is not None:
            files.append((spec, data))
    fresh = [(s, d) for s, d in files if d.get("run") == run]
    cached = [(s, d) for s, d in files if d.get("run") != run]
    if fresh:
        reference_spec, reference = fresh[0]
        out = []
        for s, d in cached:
            differ = sum(
                a != b for a, b in zip(d["clean_correct"], reference["clean_correct"], strict=True)
            )
            if differ:
                out.append(
                    (
                        s,
                        f"its clean verdicts differ from {reference_spec.id}'s, computed now, "
                        f"on {differ} point(s) of batch {k}",
                    )
                )
        return out
    if len({tuple(d["clean_correct"]) for _, d in cached}) > 1:
        return [
            (s, f"the cached attacks of batch {k} disagree on its clean verdicts")
            for s, _ in cached
        ]
    return []


def _with_solve_sites(run: Callable[..., EvaluationResult]) -> Callable[..., EvaluationResult]:
    """``run`` with the images checked against the model first, and with the odeint calls
    inside any model (torchdiffeq's or robustode's) intercepted as solve sites."""

    @functools.wraps(run)
    def wrapper(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *args, **kwargs):
        from ..nn.solve_sites import discover_sites, intercepting

        check_inputs_fit_model(model, x, y)
        with intercepting(model):
            discover_sites(model, x)
            return run(model, x, y, *args, **kwargs)

    return wrapper


@_with_solve_sites
def run_evaluation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: Sequence[AttackSpec | str],
    out_dir: str | Path,
    *,
    batch_size: int = 100,
    seed: int = 0,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool | None = None,
    ctx: DistContext | None = None,
    meta: dict[str, Any] | None = None,
    curve_steps: int = 0,
    eps_grid: Sequence[float] | None = None,
    plots: bool = True,
    stream: TextIO | None = None,
    save_adversarials: bool = False,
) -> EvaluationResult:
    """Attack the images ``x`` (labels ``y``) with every spec and the curves' runs, write
    ``report.json``, ``report.md`` and (``plots``) the PNGs into ``out_dir``.

    Curves cost extra runs only on request: ``curve_steps=K`` adds PGD-K L∞ when the specs
    have no L∞ PGD without random start to read the steps curve from, ``eps_grid`` (e.g.
    :data:`~robustode.evaluate.curves.DEFAULT_EPS_GRID`) one PGD-20 run per ε; the extra
    runs are named on ``stream`` before they start.

    ``save_adversarials``: every attack's returned points are kept beside its batch files
    (``points/ATTACK/batch-K.adv.safetensors``) and in the result's ``adversarials``; a
    batch computed earlier without them is recomputed.

    ``progress``: True a tqdm bar, False one line per attack, None a bar only on a
    terminal. ``meta``: what the report says about where the model and data came from
    (``source``, ``checkpoint``, ``data``); what was evaluated is read from ``model``,
    ``x`` and ``y`` themselves. ``resume=False`` recomputes every batch;
    ``overwrite`` replaces an evaluation of other settings in ``out_dir``.
    """
    from .report import build_report, write_report

    ctx = ctx or DistContext(device=x.device)
    meta = dict(meta or {})
    stream = stream or sys.stderr
    specs = _as_specs(specs)
    if not specs:
        raise InputError("no attacks to run")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    n = int(x.shape[0])
    out_dir = Path(out_dir)
    plan: CurvePlan = plan_curves(specs, curve_steps=curve_steps, eps_grid=eps_grid)
    extra = plan.extra_specs(specs)
    all_specs = specs + extra
    # said before they run, once the folder is ours (a refused folder is one line, no more)
    curve_lines = (
        [
            f"curves: {len(extra)} extra run(s) beyond the {len(specs)} attack(s): "
            + ", ".join(s.id for s in extra)
        ]
        if extra
        else []
    )
    model_fp = model_fingerprint(model)
    data_fp = inputs_sha256(x, y)
    config = {
        "format": EVAL_FORMAT,
        "model": model_fp,
        "data": {"sha256": data_fp, "n": n},
        "batch_size": batch_size,
        "seed": seed,
        "attacks": {s.id: settings_of(s.create(seed=seed)) for s in specs},
        "curve_attacks": [s.id for s in extra],
        "versions": versions(),
    }
    slices = [(k, a, min(a + batch_size, n)) for k, a in enumerate(range(0, n, batch_size))]
    folder = OutputFolder(out_dir, "evaluate", overwrite=overwrite, lock=ctx.is_main)
    layout = _Batches(
        folder, all_specs, slices, model_digest=digest(model_fp), data_digest=data_fp, seed=seed
    )
    show: _Progress | None = None
    try:

        def claim() -> list[str]:
            folder.claim()
            lines = _prepare_folder(folder, config, layout, resume=resume, overwrite=overwrite)
            return [*curve_lines, *lines]

        for line in ctx.on_main(claim) or []:
            print(line, file=stream, flush=True)
        if not ctx.is_main:
            folder.claim()  # attached: records this rank's files in the manifest
        run = ctx.all_gather(secrets.token_hex(8))[0]
        mine = [sl for sl in slices if sl[0] % ctx.world_size == ctx.rank]
        todo: dict[str, list[Slice]] = {}
        for spec in all_specs:
            todo[spec.id] = []
            for sl in mine:
                data, why = layout.load(spec, sl)
                if data is not None and save_adversarials and spec in specs:
                    fp = layout.fingerprints[(spec.id, sl[0])]
                    if _read_adversarials(folder, spec, sl[0], fp, sl[2] - sl[1]) is None:
                        data, why = None, "its adversarial images were not saved"
                if data is None:
                    todo[spec.id].append(sl)
                    if why is not None and ctx.is_main:
                        print(
                            f"{layout.path(spec, sl[0])}: {why}; recomputing it",
                            file=stream,
                            flush=True,
                        )
        show = _Progress(
            sum(len(v) for v in todo.values()),
            enabled=ctx.is_main,
            bar=progress,
            stream=stream,
        )
        started = time.perf_counter()

        def compute(spec: AttackSpec, sl: Slice) -> dict[str, Any]:
            k, a, b = sl
            x_adv, data = _run_batch(model, make_attack(spec, seed, k), x[a:b], y[a:b])
            if save_adversarials and spec in specs:
                _write_adversarials(folder, spec, k, x_adv, layout.fingerprints[(spec.id, k)])
            data = batches.seal(
                {
                    "fingerprint": layout.fingerprints[(spec.id, k)],
                    "attack": spec.id,
                    "batch": k,
                    "start": a,
                    "count": b - a,
                    "run": run,
                    **data,
                }
            )
            folder.write_json(_batch_rel(spec, k), data)
            return data

        for index, spec in enumerate(all_specs, 1):
            show.start(spec.id)
            ran, seconds, robust, points = 0, 0.0, 0, 0
            for sl in todo[spec.id]:
                data = compute(spec, sl)
                ran += 1
                seconds += data["seconds"]
                robust += data["count"] - sum(data["success"])
                points += data["count"]
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
        show.close()
        ctx.barrier()
        folder.refresh()
        # the same clean verdict across attacks: a cached file that disagrees is recomputed
        redo = [
            (spec, sl, why)
            for sl in slices
            for spec, why in _clean_disagreements(layout, sl, run)
            if sl[0] % ctx.world_size == ctx.rank
        ]
        for spec, sl, why in redo:
            print(f"{layout.path(spec, sl[0])}: {why}; recomputing it", file=stream, flush=True)
            compute(spec, sl)
        ctx.barrier()
        folder.refresh()

        parts: dict[str, list[dict[str, Any]]] = {}
        for spec in all_specs:
            parts[spec.id] = []
            for sl in slices:
                data, why = layout.load(spec, sl)
                if data is None:
                    raise FolderError(
                        f"{layout.path(spec, sl[0])} changed while the evaluation ran "
                        f"({why or 'it is missing'}); run the evaluation again"
                    )
                parts[spec.id].append(data)
        points_by_spec = {sid: _point_results(p) for sid, p in parts.items()}
        adversarials = None
        if save_adversarials:
            adversarials = {}
            for spec in specs:
                pieces = []
                for k, a, b in slices:
                    fp = layout.fingerprints[(spec.id, k)]
                    piece = _read_adversarials(folder, spec, k, fp, b - a)
                    if piece is None:
                        raise FolderError(
                            f"{folder.root / _adversarial_rel(spec, k)} changed while the "
                            "evaluation ran; run the evaluation again"
                        )
                    pieces.append(piece)
                adversarials[spec.id] = torch.cat(pieces)
        notes = []
        cleans = {tuple(p.clean_correct.tolist()) for p in points_by_spec.values()}
        if len(cleans) > 1:
            notes.append(
                "the attacks saw different clean verdicts for some images: the model's outputs "
                "depend on randomness or on the batch an image is in"
            )
        attacks = {s.id: s.create(seed=seed) for s in all_specs}
        notes += short_reach_notes([attacks[s.id] for s in specs], [s.id for s in specs])
        curves = _curves(plan, points_by_spec, attacks)
        report = build_report(
            specs=specs,
            attacks=attacks,
            points=points_by_spec,
            curves=curves,
            config=config,
            meta=meta,
            seconds=time.perf_counter() - started,
            notes=notes,
        )
        if ctx.is_main:
            write_report(report, folder)
            if plots:
                from .plots import write_plots

                write_plots(report, folder)
        ctx.barrier()
    finally:
        if show is not None:
            show.close()
        folder.release()
    return EvaluationResult(
        report=report, out_dir=out_dir, points=points_by_spec, adversarials=adversarials
    )


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
