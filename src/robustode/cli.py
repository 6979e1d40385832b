"""The ``robustode`` command line.

Every command prints its result as a table and writes it as JSON; bad input
gets one line naming what is wrong and what is accepted (exit code 2), never
a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import InputError, RobustodeError, command_line_spelling
from .io import write_json_atomic
from .nn import ACTIVATIONS
from .ode import METHODS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"robustode: error: {message}\n")


def _number(cast, minimum: float, inclusive: bool, what: str):
    """An argparse type: ``cast`` the text and require it finite and ≥ / > ``minimum``."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        ok = (
            value is not None
            and value != float("inf")
            and (value >= minimum if inclusive else value > minimum)
        )
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'")
        return value

    return parse


_positive_float = _number(float, 0.0, False, "a positive number")
_nonnegative_float = _number(float, 0.0, True, "a number ≥ 0")
_positive_int = _number(int, 1, True, "a positive integer")


# --------------------------------------------------------------------- stability
def _add_stability(sub) -> None:
    p = sub.add_parser(
        "stability",
        help="measure SONet Theorem 3.1: skew vs unconstrained ODE block, output distance vs t0",
        description=(
            "Integrate two inputs DELTA apart (L2) through a skew-symmetric ODE block "
            "(dz/dt = σ(Wx − γz), dx/dt = σ(−Wᵀz − γx)) and through an unconstrained one "
            "(independent second kernel, same initial scale) up to each t0, and print the "
            "largest output distance ‖z(t0) − z'(t0)‖ over a batch of random images. "
            "The theorem says the skew block's distance stays bounded as t0 grows."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--t0",
        type=_positive_float,
        nargs="+",
        default=[1.0, 5.0, 20.0, 50.0],
        help="integration end times",
    )
    p.add_argument("--gamma", type=_nonnegative_float, default=0.1, help="damping γ")
    p.add_argument(
        "--activation",
        choices=sorted(ACTIVATIONS),
        default="leaky_relu",
        help="activation σ (the theorem needs σ' > 0)",
    )
    p.add_argument("--channels", type=_positive_int, default=4, help="channels of x and z")
    p.add_argument("--size", type=_positive_int, default=8, help="image height and width")
    p.add_argument("--batch", type=_positive_int, default=8, help="random images")
    p.add_argument("--delta", type=_positive_float, default=1e-3, help="input distance (L2)")
    p.add_argument("--method", choices=METHODS, default="dopri5", help="ODE solver")
    p.add_argument("--tol", type=_positive_float, default=1e-6, help="rtol = atol")
    p.add_argument("--seed", type=int, default=0, help="seed of images and kernels")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/stability"),
        help="output folder: the table is written there as stability.json",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a stability.json in the output folder that came from other settings",
    )
    p.set_defaults(run=_run_stability)


def _run_stability(args: argparse.Namespace) -> int:
    from .experiments.stability import STABILITY_FILE, StabilitySettings, run_stability

    settings = StabilitySettings(
        t0s=tuple(sorted(set(args.t0))),
        gamma=args.gamma,
        channels=args.channels,
        size=args.size,
        batch=args.batch,
        delta=args.delta,
        activation=args.activation,
        method=args.method,
        tol=args.tol,
        seed=args.seed,
    )
    result = run_stability(
        settings,
        out_dir=args.out,
        overwrite=args.overwrite,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(result.to_markdown())
    print(f"\nwrote {args.out / STABILITY_FILE} ({result.seconds:.1f} s)")
    return 0


# --------------------------------------------------------------------- models
def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON where it parses (numbers, true, null), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, parsed


def _add_models(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered models, or describe one built with given options",
        description=(
            "Without NAME: a table of every model (paper, parameter count at the default "
            "options, ODE blocks, perturbation points). With NAME: build it with the given "
            "KEY=VALUE options (as create_model takes them) and list its options, ODE blocks "
            "with their solvers, and perturbation points."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="a model name (see the table without NAME)")
    p.add_argument(
        "options",
        nargs="*",
        type=_option,
        metavar="KEY=VALUE",
        help="model options, e.g. width=32 method=rk4 step_size=0.25",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from .models.summary import summarize_all, summarize_model

    if args.name is None:
        rows = summarize_all()
        print("| model | parameters | ODE blocks | perturbation points | paper |")
        print("|---|---:|---:|---:|---|")
        for r in rows:
            print(
                f"| {r.name} | {r.parameters:,} | {len(r.ode_blocks)} | "
                f"{len(r.perturbation_points)} | {r.paper} |"
            )
        result = [r.to_dict() for r in rows]
    else:
        r = summarize_model(args.name, **dict(args.options))
        print(f"{r.name}: {r.summary}\npaper: {r.paper}\nparameters: {r.parameters:,}\n")
        print("options: " + ", ".join(f"{k}={v!r}" for k, v in r.options.items()))
        if r.ode_options:
            print("ODE options (reach every ODE block): " + ", ".join(r.ode_options))
        for block in r.ode_blocks:
            print(f"ODE block {block['block']}: {block['type']}, {block['solver']}")
        print("perturbation points: " + ", ".join(r.perturbation_points))
        result = r.to_dict()
    if args.json is not None:
        write_json_atomic(result, args.json)
        print(f"\nwrote {args.json}")
    return 0


# --------------------------------------------------------------------- attacks
def _add_attacks(sub) -> None:
    p = sub.add_parser(
        "attacks",
        help="list the attack presets (the papers' settings), or describe one with overrides",
        description=(
            "Without NAME: a table of every attack preset with its threat model and its budget "
            "in model calls per image. With NAME: the attack built with the given KEY=VALUE "
            "overrides (e.g. eps=0.0157 steps=50) and the options it accepts. In Python: "
            "robustode.attacks.create_attack(NAME, **overrides)(model, x, y)."
        ),
    )
    p.add_argument("name", nargs="?", help="an attack preset (see the table without NAME)")
    p.add_argument(
        "options",
        nargs="*",
        type=_option,
        metavar="KEY=VALUE",
        help="overrides, e.g. eps=0.0157 steps=50 seed=1",
    )
    p.set_defaults(run=_run_attacks)


def _run_attacks(args: argparse.Namespace) -> int:
    from .attacks import attack_preset, create_attack, list_attacks

    if args.name is None:
        print("| attack | threat model | calls per image | setting |")
        print("|---|---|---:|---|")
        for name in list_attacks():
            attack = create_attack(name)
            print(
                f"| {name} | {attack.threat.describe()} | {attack.budget():,} | "
                f"{attack_preset(name).summary} |"
            )
        return 0
    attack = create_attack(args.name, **dict(args.options))
    print(attack.describe())
    print(f"model calls per image at most: {attack.budget():,}")
    print("options: " + ", ".join(attack_preset(args.name).options))
    return 0


# --------------------------------------------------------------------- defenses
def _add_defenses(sub) -> None:
    p = sub.add_parser(
        "defenses",
        help="list the training defenses and their options",
        description=(
            "Every training objective 'robustode train --defense NAME --defense-opt KEY=VALUE' "
            "accepts, with its options and defaults."
        ),
    )
    p.set_defaults(run=_run_defenses)


def _run_defenses(args: argparse.Namespace) -> int:
    from .defenses import defense_entry, list_defenses

    for name in list_defenses():
        entry = defense_entry(name)
        options = ", ".join(f"{k}={v!r}" for k, v in entry.options.items()) or "none"
        print(f"{name}: {entry.summary}\n    options: {options}")
    return 0


# --------------------------------------------------------------------- train
_OPTION_FLAGS = {"model_options": "--model-opt", "defense_options": "--defense-opt"}


def _add_train(sub) -> None:
    from .train.config import PRESETS, field_info

    presets = "; ".join(f"{name}: {text}" for name, (text, _) in PRESETS.items())
    p = sub.add_parser(
        "train",
        help="train a model with a defense; checkpoints, metrics, resume, DDP under torchrun",
        description=(
            "Train MODEL with DEFENSE on DATA into a run folder (config.json, metrics.jsonl, "
            "checkpoints/). Settings come in layers: defaults, --preset, --config FILE (TOML or "
            "JSON; keys are the option names below with '_' for '-'), then these flags. "
            "Under 'torchrun --nproc_per_node=N -m robustode train …' it trains with DDP."
        ),
        epilog=f"presets — {presets}",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="a paper's training recipe")
    p.add_argument("--config", type=Path, help="TOML or JSON file of settings")
    p.add_argument(
        "--run-dir",
        type=Path,
        help="run folder (default: runs/MODEL-DEFENSE-DATA-seedSEED)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue that run from its latest checkpoint (flags may change epochs, device, …)",
    )
    p.add_argument(
        "--checkpoint",
        default="latest",
        metavar="WHICH",
        help="with --resume: the checkpoint to continue from, latest or epoch-N (default: "
        "latest, or the point a stop signal left)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run already in the run folder first (only files robustode wrote)",
    )
    p.add_argument(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a tqdm bar per epoch (default: only on a terminal; otherwise one line per epoch)",
    )
    for name, default, meta in field_info():
        kind = meta["kind"]
        flag = _OPTION_FLAGS.get(name, "--" + name.replace("_", "-"))
        shown = "unset" if default is None else default
        if isinstance(default, tuple):
            shown = " ".join(map(str, default)) or "none"
        help_text = f"{meta['help']} (default: {shown})"
        kwargs: dict = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if kind == "options":
            kwargs.update(action="append", type=_option, metavar="KEY=VALUE")
            kwargs["help"] = f"{meta['help']}; repeatable"
        elif kind in ("bool", "bool?"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "ints":
            kwargs.update(nargs="*", type=int, metavar="EPOCH")
        elif kind in ("int", "int?"):
            kwargs.update(type=int, metavar="N")
        elif kind == "float":
            kwargs.update(type=float, metavar="X")
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        p.add_argument(flag, **kwargs)
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import os

    from .train import build_config, read_run_config, train
    from .train.config import field_names
    from .train.loop import TrainingStopped

    overrides = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    for name in _OPTION_FLAGS:
        if name in overrides:
            overrides[name] = dict(overrides[name])
    if args.resume is not None:
        if args.preset or args.config:
            raise InputError("--resume takes the run's own config; --preset/--config do not apply")
        if args.run_dir is not None and args.run_dir != args.resume:
            raise InputError("--resume names the run folder; drop --run-dir")
        if args.overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        run_dir = args.resume
        config = build_config(base=read_run_config(run_dir), overrides=overrides)
    else:
        config = build_config(preset_name=args.preset, file=args.config, overrides=overrides)
        run_dir = args.run_dir or Path(
            "runs", f"{config.model}-{config.defense}-{config.data}-seed{config.seed}"
        )
    if args.checkpoint != "latest" and args.resume is None:
        raise InputError("--checkpoint chooses where --resume continues from; add --resume RUN_DIR")
    try:
        summary = train(
            config,
            run_dir,
            resume=args.resume is not None,
            overwrite=args.overwrite,
            progress=args.progress_bar,
            checkpoint=args.checkpoint,
        )
    except TrainingStopped:
        raise
    except KeyboardInterrupt:
        print(f"continue with: robustode train --resume {run_dir}", file=sys.stderr)
        raise
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    rows = summary.records[-10:]
    if rows:
        print("| epoch | loss | train acc | test acc | lr | NFE fwd/batch | NFE bwd/batch | s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            cells = [
                str(r["epoch"]),
                f"{r['loss']:.4f}",
                "-" if r.get("train_acc") is None else f"{r['train_acc']:.4f}",
                "-" if r.get("test_acc") is None else f"{r['test_acc']:.4f}",
                f"{r['lr']:.3g}",
                f"{r['nfe_forward_per_batch']:.1f}",
                f"{r['nfe_backward_per_batch']:.1f}",
                f"{r['seconds']:.1f}",
            ]
            print("| " + " | ".join(cells) + " |")
    else:
        print(f"{run_dir} is already at epoch {summary.epochs}; nothing to train")
    print(f"\nrun folder {run_dir} (checkpoint {summary.checkpoint}, {summary.seconds:.1f} s)")
    return 0


# --------------------------------------------------------------------- steps
def _number_list(cast, what: str):
    """An argparse type: comma-separated numbers, each checked by ``_number``."""

    def parse(text: str):
        one = _number(cast, 0.0, False, what)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s")
        try:
            return [one(p) for p in parts]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {what}s, got '{text}'"
            ) from None

    return parse


def _add_steps(sub) -> None:
    from .evaluate.target import add_target_arguments

    p = sub.add_parser(
        "steps",
        help="SONet Table 3: the adaptive step grids of the ODE blocks along a PGD trajectory",
        description=(
            "Run PGD (the attack's ε, step and loss; no early stop, no best-iterate selection) "
            "on the first N test images and print, for every ODE block, the accepted time grid "
            "(step starts, then t1) on the clean batch and after each of ITERATIONS steps, with "
            "NFE, rejected steps and how far the grid moved. With --per-image every image is "
            "also evaluated alone, giving the spread of step sizes across images and "
            "perturbations. --tol reruns the study with the blocks' tolerance changed, as Table "
            "3 does. Writes steps.json and steps.png to the output folder."
        ),
    )
    add_target_arguments(p, n_default=16)
    p.add_argument(
        "--iterations",
        type=_number_list(int, "positive integer"),
        default=[1, 100, 1000],
        metavar="K,K,…",
        help="PGD iterations at which to read the grids (default: 1,100,1000)",
    )
    p.add_argument(
        "--attack",
        default="pgd1000-linf",
        help="gradient-attack preset the trajectory follows (default: pgd1000-linf, SONet's "
        "ε 0.031, step 0.003, no random start); its step count is not used",
    )
    p.add_argument("--eps", type=_positive_float, help="override the attack's ε")
    p.add_argument("--step-size", type=_positive_float, help="override the attack's step size")
    p.add_argument(
        "--tol",
        type=_number_list(float, "positive number"),
        metavar="TOL,TOL,…",
        help="rerun the study with rtol = atol = TOL on every adaptive block, once per value, "
        "e.g. 0.1,0.01,0.001 (default: the model's own tolerance)",
    )
    p.add_argument(
        "--per-image",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also evaluate every image alone for the spread across images (default: on)",
    )
    p.set_defaults(run=_run_steps)


def _run_steps(args: argparse.Namespace) -> int:
    from .evaluate.steps import (
        TrajectorySettings,
        find_ode_blocks,
        format_table,
        run_step_studies,
    )
    from .evaluate.target import target_from_args

    # a bad attack name or override: one error line before anything is loaded or announced
    TrajectorySettings.from_attack(args.attack, eps=args.eps, step_size=args.step_size)
    target = target_from_args(args)
    find_ode_blocks(target.model)  # a model without ODE blocks: one error line, nothing run
    x, y = _test_images(target, args)
    out = args.out if args.out is not None else target.default_out_dir("steps")
    studies = run_step_studies(
        target.model,
        x,
        y,
        out,
        iterations=args.iterations,
        attack=args.attack,
        eps=args.eps,
        step_size=args.step_size,
        per_image=args.per_image,
        tols=args.tol,
        overwrite=args.overwrite,
        meta=target.report_meta(),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_table(studies))
    seconds = sum(s.seconds for s in studies)
    print(f"\nwrote {out}/steps.json, steps.md and steps.png ({seconds:.1f} s)")
    return 0


def _test_images(target, args: argparse.Namespace, *, show: bool = True):
    """The first --n test images (the command's default when not given); a note when the
    split holds fewer than an --n the user asked for."""
    given = args.n is not None
    x, y = target.test_images(args.n if given else args.n_default, note=given)
    for note in (target.notes or []) if show else []:
        print(f"note: {note}", file=sys.stderr, flush=True)
    return x, y


# --------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: train, attack and audit three small models on digits (minutes)",
        description=(
            "SONet §6 end to end on the embedded digits data (no download): train a SOBlock "
            "with Euler, the same with dopri5 at tol 0.1, and a PGD-trained ResNet10; attack "
            "each with PGD-20, PGD-200, CW-L∞, SPSA and the solver-substitution attack (L∞, "
            "ε 0.1); run the gradient-masking audit; print one table with each verdict. Writes "
            "OUT/demo.md, demo.json, demo.png and each model's run folder with its eval/ "
            "report and audit/. Re-running reuses finished training and attack batches."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of training and attacks")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument(
        "--audit-level",
        choices=("quick", "standard", "thorough"),
        default="quick",
        help="budget of the gradient-masking audit (default: quick)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="retrain and re-attack instead of reusing"
    )
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import format_demo, run_demo
    from .train.distributed import resolve_device

    device = str(resolve_device(args.device))
    result = run_demo(
        args.out,
        seed=args.seed,
        device=device,
        overwrite=args.overwrite,
        audit_level=args.audit_level,
    )
    print(format_demo(result))
    print(f"\nwrote {args.out}/demo.md, demo.json, demo.png ({result.seconds:.0f} s)")
    return 0


# --------------------------------------------------------------------- reproduce
def _add_reproduce(sub) -> None:
    from .experiments.reproduce import list_tables

    p = sub.add_parser(
        "reproduce",
        help="train and evaluate a table of either paper; print ours next to the paper's",
        description=(
            "Reproduce one table of SONet (sonet-t1 … sonet-t4) or LAD (lad-t1 … lad-t7). "
            "--scale full uses the papers' settings (a GPU and the full CIFAR data); "
            "--scale smoke runs the same pipeline on the digits data in minutes on a CPU "
            "(its numbers check the pipeline, not the papers). Every row is a run folder "
            "under OUT/TABLE/, so an interrupted reproduce continues where it stopped."
        ),
    )
    p.add_argument("table", nargs="?", choices=list_tables(), metavar="TABLE", help="table name")
    p.add_argument("--list", action="store_true", help="list the tables and exit")
    p.add_argument("--scale", choices=("smoke", "full"), default="smoke", help="default: smoke")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="output folder")
    p.add_argument("--data-dir", help="dataset folder at full scale (CIFAR-10/100)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="attack batch size")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain and re-evaluate rows that OUT/TABLE holds from other settings",
    )
    p.set_defaults(run=_run_reproduce)


def _run_reproduce(args: argparse.Namespace) -> int:
    from .experiments.reproduce import describe_tables, format_table, reproduce
    from .train.distributed import resolve_device

    if args.list:
        print(describe_tables())
        return 0
    if args.table is None:
        raise InputError("name a table (robustode reproduce --list shows them)")
    result = reproduce(
        args.table,
        scale=args.scale,
        out_dir=args.out,
        data_dir=args.data_dir,
        device=str(resolve_device(args.device)),
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    print(format_table(result))
    print(f"\nwrote {result.out_dir}/reproduce.md and reproduce.json ({result.seconds:.0f} s)")
    return 0


# --------------------------------------------------------------------- evaluate
def _comma_list(text: str) -> list[str]:
    """A comma list of attack specs; commas inside NAME:k=v,k=v stay with their spec."""
    items: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if items and ":" in items[-1] and "=" in part and ":" not in part:
            items[-1] += "," + part  # another key=value of the previous spec
        else:
            items.append(part)
    return items


def _eps_grid(text: str) -> list[float]:
    """A comma list of ε in 1/255 units ('' for none)."""
    values = []
    for part in text.split(","):
        if part.strip():
            value = _positive_float(part.strip())
            values.append(value / 255)
    return values


def _add_evaluate(sub) -> None:
    from .evaluate.curves import EPS_GRID_255
    from .evaluate.suites import SUITES

    p = sub.add_parser(
        "evaluate",
        help="run an attack suite on the first N test images; report.json/.md and plots",
        description=(
            "Attack a trained model with a suite of attacks on the first N test images "
            "(in order), print the robust accuracy per attack and the per-point worst case per "
            "threat model, and write report.json, report.md, robust_vs_steps.png, "
            "robust_vs_eps.png and per_attack.png into --out. Every (attack, batch) result is "
            "saved as it finishes: rerunning the same command continues an interrupted "
            "evaluation. Under 'torchrun --nproc_per_node=N -m robustode evaluate …' the "
            "batches are shared out over the processes."
        ),
        epilog=(
            "suites — paper: pgd20-linf, pgd1000-linf, pgd20-l2, pgd1000-l2, cw-linf, spsa "
            "(SONet); autoattack: AutoAttack standard without FAB-T; full: paper + apgd-ce, "
            "apgd-t, square, autoattack and, for ODE models, adaptive PGD. "
            "Attack specs: NAME or NAME:key=value,... (see 'robustode attacks'), e.g. "
            "--attacks 'pgd20-linf:eps=0.01,fgsm'."
        ),
    )
    from .evaluate.target import add_target_arguments

    add_target_arguments(p)
    p.add_argument(
        "--suite",
        choices=list(SUITES),
        help="a named suite of attacks (default: paper, unless --attacks is given)",
    )
    p.add_argument(
        "--attacks",
        type=_comma_list,
        metavar="SPEC,SPEC",
        help="attack specs, comma-separated (added to --suite when both are given)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=100, help="images per batch (default: 100)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the randomised attacks (default: 0)"
    )
    p.add_argument(
        "--curve-steps",
        type=_number(int, 0, True, "an integer ≥ 0"),
        default=100,
        metavar="K",
        help="PGD-K L∞ run for the robust-vs-steps curve when the suite has no PGD L∞ "
        "without random start (0: no curve; default: 100)",
    )
    p.add_argument(
        "--eps-grid",
        type=_eps_grid,
        default=None,
        metavar="E,E",
        help="ε values in 1/255 units for the robust-vs-ε curve (PGD-20 L∞); '' skips it "
        f"(default: {','.join(f'{e:g}' for e in EPS_GRID_255)} and 0.031)",
    )
    p.add_argument(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a tqdm bar (default: only on a terminal; otherwise one line per attack)",
    )
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate.curves import DEFAULT_EPS_GRID
    from .evaluate.runner import run_evaluation
    from .evaluate.suites import resolve_attacks
    from .evaluate.target import load_target
    from .train.distributed import setup

    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be ≥ 1, got {args.n}")
    suite = args.suite or (None if args.attacks else "paper")
    ctx = setup(args.device)
    out = None
    try:
        target = load_target(
            args.path,
            device=ctx.device,
            data=args.data,
            data_dir=args.data_dir,
            checkpoint=args.checkpoint,
        )
        specs = resolve_attacks(suite, args.attacks, target.model)
        x, y = _test_images(target, args, show=ctx.is_main)
        out = args.out or target.default_out_dir("eval")
        result = run_evaluation(
            target.model,
            x,
            y,
            specs,
            out,
            batch_size=args.batch_size,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=args.progress_bar,
            ctx=ctx,
            meta=target.report_meta(),
            curve_steps=args.curve_steps,
            eps_grid=DEFAULT_EPS_GRID if args.eps_grid is None else args.eps_grid,
        )
    except KeyboardInterrupt:
        if out is not None and ctx.is_main:
            print(
                f"robustode: the finished batches are kept in {out}; run the same command "
                "again to continue",
                file=sys.stderr,
            )
        raise
    finally:
        ctx.teardown()
    if ctx.is_main:
        print(result.table())
        for note in result.report["notes"]:
            print(f"note: {note}")
        print(f"\nwrote {out}/report.json, report.md and plots")
    return 0


# --------------------------------------------------------------------- audit
def _eps_value(text: str) -> float:
    """An L∞ radius in pixel units ([0, 1] images): '0.031' or a fraction such as '8/255'."""
    num, sep, den = text.partition("/")
    try:
        value = float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not (value == value and 0 < value <= 1):
        raise argparse.ArgumentTypeError(
            f"expected a radius in (0, 1] such as 0.031 or 8/255, got '{text}'"
        )
    return value


def _add_audit(sub) -> None:
    from .evaluate.audit import FAIL_ON, LEVELS
    from .evaluate.target import add_target_arguments

    budgets = "; ".join(
        f"{name}: n {lv.n}, PGD-{lv.pgd_steps}, {lv.restarts} restarts, Square {lv.square_queries}"
        for name, lv in LEVELS.items()
    )
    p = sub.add_parser(
        "audit",
        help="check a model for gradient masking: masked / suspicious / no masking detected",
        description=(
            "Run the gradient-masking checks of Carlini et al. 2019 and Pintor et al. 2022 plus "
            "ODE-specific ones (solver substitution, finite differences, batch composition) on "
            "the first N test images, print one row per check (status, evidence, what a failure "
            "implies) and the verdict: 'masked' if a check of severity masked failed, "
            "'suspicious' if one of severity suspicious failed, else 'no masking detected'. "
            "Writes audit.json and audit.md. See docs/audit.md."
        ),
        epilog=f"levels — {budgets}",
    )
    add_target_arguments(p, n_default=None)
    for action in p._actions:
        if action.dest == "n":
            action.help = (
                "the first N test images, in order (default: by level, "
                + ", ".join(f"{name} {lv.n}" for name, lv in LEVELS.items())
                + ")"
            )
    p.add_argument(
        "--eps",
        type=_eps_value,
        default=8 / 255,
        metavar="EPS",
        help="L∞ radius in pixel units, e.g. 0.031 or 8/255 (default: 8/255)",
    )
    p.add_argument(
        "--level",
        choices=list(LEVELS),
        default="standard",
        help="budgets and default N (default: standard)",
    )
    p.add_argument(
        "--surrogate",
        type=Path,
        metavar="PATH",
        help="a run folder or checkpoint whose PGD adversarials are transferred to the model "
        "(default: for ODE models the model itself with a fixed-step solver, else no transfer)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="images per model call (default: all)",
    )
    p.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        default="never",
        help="exit 1 when the verdict is at least this (masked > suspicious); default never",
    )
    p.set_defaults(run=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from .evaluate.audit import LEVELS, audit, fails_on
    from .evaluate.target import load_target, target_from_args

    target = target_from_args(args)
    args.n_default = LEVELS[args.level].n
    surrogate = None
    if args.surrogate is not None:
        surrogate = load_target(args.surrogate, device=next(target.model.parameters()).device)
        surrogate = surrogate.model
    x, y = _test_images(target, args)
    out = args.out or target.default_out_dir("audit")
    meta = target.report_meta()
    meta["surrogate"] = None if args.surrogate is None else str(args.surrogate)
    report = audit(
        target.model,
        x,
        y,
        eps=args.eps,
        level=args.level,
        surrogate=surrogate,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
        out_dir=out,
        overwrite=args.overwrite,
        meta=meta,
    )
    print(report.table())
    print(f"\n{report.verdict_line()}")
    print(f"wrote {out}/audit.json and audit.md ({report.seconds:.1f} s)")
    return 1 if fails_on(report.verdict, args.fail_on) else 0


# --------------------------------------------------------------------- bench
BENCH_SECTIONS = ("ode", "memory", "attacks", "training", "fields", "data", "gpu")
_BENCH_PEERS = {"ode": "torchdiffeq", "memory": "torchdiffeq", "attacks": "torchattacks"}


def bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``robustode bench`` (also ``python -m benchmarks.suite``)."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and 3 repeats: a sanity run of every section (under 3 minutes on "
        "2 cores); the figures in benchmarks/RESULTS.md come from the full run",
    )
    p.add_argument(
        "--only",
        default=",".join(BENCH_SECTIONS),
        metavar="NAMES",
        help="comma-separated sections to run, in this order (default: all: "
        f"{','.join(BENCH_SECTIONS)})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench"),
        help="folder for bench.md and bench.json, rewritten after each section "
        "(default: runs/bench)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="cifar-10-batches-py folder for the attacks section (default: "
        "$ROBUSTODE_CIFAR10_DIR, else ../shared/data/cifar-10-batches-py next to the checkout)",
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark robustode against its peers (torchdiffeq, torchattacks, DataLoader)",
        description=(
            "Run the benchmarks/ suite from a source checkout: ODE solves vs torchdiffeq, "
            "adjoint memory, attacks vs torchattacks on CIFAR-10 test images, training step "
            "per defense, the fast vector fields vs their reference implementation, the data "
            "pipeline, and (with CUDA) training throughput with bf16, "
            "channels_last and torch.compile. Every time is a ratio against the peer, "
            "measured interleaved in the same run. Prints Markdown tables and writes "
            "bench.md and bench.json. Needs the test extras (bash scripts/setup.sh test)."
        ),
    )
    bench_arguments(p)
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import importlib.util

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCH_SECTIONS]
    if unknown or not names:
        raise InputError(
            f"--only: unknown section {', '.join(map(repr, unknown)) or repr(args.only)}; "
            f"choose from {', '.join(BENCH_SECTIONS)} (comma-separated)"
        )
    missing = sorted(
        {_BENCH_PEERS[n] for n in names if n in _BENCH_PEERS}
        - {m for m in _BENCH_PEERS.values() if importlib.util.find_spec(m)}
    )
    if missing:
        raise InputError(
            f"the benchmarks compare against {', '.join(missing)}, which is not installed; "
            "install the test extras with: bash scripts/setup.sh test"
        )
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "suite.py").is_file():
        raise InputError(
            "robustode bench runs the benchmarks/ folder of a source checkout, and this "
            f"installation has none (looked in {root}); clone the repository and install it "
            "with pip install -e ."
        )
    sys.path.insert(0, str(root))
    from benchmarks.suite import run_from_args

    return run_from_args(names, args, "robustode bench")


# --------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robustode",
        description="Adversarial robustness seen through ODEs: stable ODE blocks, exact "
        "solver semantics, attacks, defenses and gradient-masking audits.",
    )
    parser.add_argument("--version", action="version", version=f"robustode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_demo(sub)
    _add_stability(sub)
    _add_models(sub)
    _add_train(sub)
    _add_attacks(sub)
    _add_defenses(sub)
    _add_evaluate(sub)
    _add_audit(sub)
    _add_steps(sub)
    _add_reproduce(sub)
    _add_bench(sub)
    return parser


def _bug(exc: BaseException) -> int:
    import traceback

    traceback.print_exception(exc)
    print(
        f"robustode: this is a bug in robustode ({type(exc).__name__} above), not a problem "
        "with your input; please report it with the traceback",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from .signals import Terminated, interrupt_on_termination
    from .train.loop import TrainingStopped

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    with command_line_spelling(), interrupt_on_termination():
        try:
            return int(args.run(args))
        except RobustodeError as exc:
            print(f"robustode: error: {exc}", file=sys.stderr)
            return 2
        except (MemoryError, torch.OutOfMemoryError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(
                f"robustode: error: out of memory ({first}); use a smaller --batch-size or "
                "fewer images",
                file=sys.stderr,
            )
            return 1
        except TrainingStopped as exc:
            print(f"robustode: {exc}", file=sys.stderr)
            return 128 + exc.signum if exc.signum else 130
        except Terminated as exc:
            print(f"robustode: stopped by {exc}", file=sys.stderr)
            return 128 + exc.signum
        except KeyboardInterrupt:
            print("robustode: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # anything else is robustode's bug: keep its traceback
            return _bug(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
