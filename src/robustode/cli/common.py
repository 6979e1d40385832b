"""What the commands share: the argument parser, argument types and the model target.

Every argument type raises ``argparse.ArgumentTypeError`` with what it
accepts, which the parser prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"robustode: error: {message}\n")


def number(cast, minimum: float, inclusive: bool, what: str):
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


positive_float = number(float, 0.0, False, "a positive number")
nonnegative_float = number(float, 0.0, True, "a number ≥ 0")
positive_int = number(int, 1, True, "a positive integer")


def option(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read by :func:`robustode.options.parse_value` (numbers, fractions
    such as 8/255, true/false, null, JSON lists; otherwise text)."""
    from ..options import parse_option

    try:
        return parse_option(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def number_list(cast, what: str):
    """An argparse type: comma-separated numbers, each checked by ``number``."""

    def parse(text: str):
        one = number(cast, 0.0, False, what)
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


def test_images(target, args: argparse.Namespace, *, show: bool = True):
    """The first --n test images (the command's default when not given); a note when the
    split holds fewer than an --n the user asked for."""
    given = args.n is not None
    x, y = target.test_images(args.n if given else args.n_default, note=given)
    for note in (target.notes or []) if show else []:
        print(f"note: {note}", file=sys.stderr, flush=True)
    return x, y


def comma_list(text: str) -> list[str]:
    """A comma list of attack specs; commas inside NAME:k=v,k=v stay with their spec."""
    from ..evaluate.suites import split_specs

    return split_specs(text)


def eps_grid(text: str) -> list[float]:
    """A comma list of ε in 1/255 units ('' for none)."""
    values = []
    for part in text.split(","):
        if part.strip():
            value = positive_float(part.strip())
            values.append(value / 255)
    return values


def eps_value(text: str) -> float:
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


# --------------------------------------------------------------- what a command evaluates
def add_target_arguments(parser: Any, *, n_default: int | None = 1000) -> None:
    """The arguments every evaluation command shares: what to evaluate (a run folder or
    checkpoint, or --model with --weights), its data, --n, --device, --out, --overwrite."""
    parser.add_argument(
        "path",
        type=Path,
        nargs="?",
        metavar="RUN_DIR|CHECKPOINT",
        help="a run folder (its --checkpoint), a checkpoint .json or a weights .safetensors; "
        "or leave it out and name your own model with --model",
    )
    parser.add_argument(
        "--model",
        metavar="MODULE:FUNCTION",
        help="your own model: a function returning an nn.Module that takes images in [0, 1] "
        "and returns logits, as package.module:function or path/to/file.py:function "
        "(docs/byom.md)",
    )
    parser.add_argument(
        "--model-args",
        type=option,
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="keyword arguments of the --model function (values read as JSON where they "
        "parse, e.g. width=16 pretrained=false)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="a state dict for --model: .safetensors, or a PyTorch file read with PyTorch's "
        "weights_only loader (a pickle carrying code is refused)",
    )
    parser.add_argument(
        "--checkpoint",
        default="latest",
        metavar="WHICH",
        help="which checkpoint of a run folder: latest, best (highest test accuracy) or "
        "epoch-N (default: latest)",
    )
    parser.add_argument(
        "--data",
        help="dataset: cifar10, cifar100, digits or npz (default: the run's own; required with "
        "--model or a bare .safetensors)",
    )
    parser.add_argument(
        "--data-dir", help="the dataset's folder, or the .npz file (default: the run's own)"
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="download CIFAR-10/100 into --data-dir if it is missing",
    )
    parser.add_argument(
        "--n",
        "--num-images",  # the spelling torchrun's own parser does not take for a prefix
        dest="n",
        type=int,
        default=None,
        metavar="N",
        help=f"the first N test images, in order (default: {n_default or 'all'})",
    )
    parser.set_defaults(n_default=n_default)
    add_device_argument(parser)
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: RUN_DIR/<command>, or beside the checkpoint or weights)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results already in the output folder that came from other settings",
    )


def add_device_argument(parser: Any) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:K or auto: the GPU when there is one (default: auto)",
    )


def target_from_args(args: Any, device: Any = None) -> Any:
    """Load what the shared arguments name, on ``device`` (default: ``--device``)."""
    from ..evaluate.target import load_target
    from ..train.distributed import resolve_device

    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be ≥ 1, got {args.n}")
    if args.model is None and args.model_args is not None:
        raise InputError("--model-args are the arguments of --model MODULE:FUNCTION; add --model")
    target = load_target(
        args.path,
        device=resolve_device(args.device) if device is None else device,
        data=args.data,
        data_dir=args.data_dir,
        checkpoint=args.checkpoint,
        model=args.model,
        model_args=None if args.model_args is None else dict(args.model_args),
        weights=args.weights,
    )
    target.download = bool(getattr(args, "download", False))
    if target.notes:
        for note in target.notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        target.notes = None
    return target
