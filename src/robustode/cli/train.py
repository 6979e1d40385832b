"""``robustode train``: train a model with a defense into a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .common import option

_OPTION_FLAGS = {"model_options": "--model-opt", "defense_options": "--defense-opt"}


def add(sub) -> None:
    from ..train.config import PRESETS, field_info

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
            kwargs.update(action="append", type=option, metavar="KEY=VALUE")
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..train import build_config, read_run_config, train
    from ..train.config import field_names
    from ..train.loop import TrainingStopped

    overrides = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    if overrides.get("data_dir"):
        # stored absolute: evaluating the run from another folder finds the same data
        overrides["data_dir"] = str(Path(overrides["data_dir"]).expanduser().resolve())
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
        # a factory's run is named after its function (the spec holds '/' and ':')
        model_name = config.model.rpartition(":")[2] or config.model
        run_dir = args.run_dir or Path(
            "runs", f"{model_name}-{config.defense}-{config.data}-seed{config.seed}"
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
        why = (
            f" (its test accuracy plateaued: plateau_patience {config.plateau_patience})"
            if summary.plateau
            else ""
        )
        print(f"{run_dir} is already at epoch {summary.epochs}{why}; nothing to train")
    print(f"\nrun folder {run_dir} (checkpoint {summary.checkpoint}, {summary.seconds:.1f} s)")
    return 0
