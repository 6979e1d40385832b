"""What an evaluation command points at: a run folder or a checkpoint, and its test data.

``robustode evaluate | audit | steps`` take ``RUN_DIR|CHECKPOINT``. A run
folder (or a checkpoint's ``.json``) knows which dataset it was trained on;
a bare weights ``.safetensors`` file does not, so the data must be named.
Which checkpoint of a run folder is read is explicit (``checkpoint`` =
``latest``, ``best`` or ``epoch-N``); a damaged one is an error, never a
silent fallback. The test images are the **first n of the test split, in
order** (RobustBench protocol), as float32 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import load_dataset
from ..errors import InputError, spell
from ..fingerprint import tensors_sha256
from ..train.checkpoint import CHECKPOINT_DIR, read_weights


@dataclass
class Target:
    """A loaded model (eval mode) and where its test data comes from."""

    model: nn.Module
    model_config: dict[str, Any]
    source: Path
    run_dir: Path | None
    data: str | None
    data_dir: str | None
    data_seed: int
    weights_sha256: str
    checkpoint: dict[str, Any] | None = None  # {file, epoch} the weights were read from
    notes: list[str] | None = None

    def default_out_dir(self, command: str) -> Path:
        """``RUN_DIR/<command>`` for a run folder, else ``<stem>-<command>/`` beside the file."""
        if self.run_dir is not None:
            return self.run_dir / command
        return self.source.with_name(f"{self.source.stem}-{command}")

    def report_meta(self) -> dict[str, Any]:
        """What an evaluation report says about the model and its data (``run_evaluation``'s
        ``meta``)."""
        return {
            "source": str(self.source),
            "checkpoint": self.checkpoint,
            "data": {"name": self.data, "data_dir": self.data_dir, "seed": self.data_seed},
        }

    def test_images(
        self, n: int | None = None, *, note: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images in order (all if None): float32 in [0, 1], int64 labels,
        on the model's device. Asking for more than the split holds adds a line to
        :attr:`notes` saying what was used (``note=False``: not for a default ``n``)."""
        if self.data is None:
            raise InputError(
                f"{self.source} does not say which dataset it was trained on; pass "
                f"{spell('data')} (cifar10, cifar100, digits or npz) and {spell('data_dir')}"
            )
        data = load_dataset(self.data, split="test", root=self.data_dir, seed=self.data_seed)
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise InputError(f"n must be an integer ≥ 1, got {n!r}")
            if n > len(data) and note:
                text = (
                    f"the {self.data} test split has {len(data)} images; using all {len(data)} "
                    f"(asked for {n})"
                )
                self.notes = [*(self.notes or []), text]
            data = data.subset(min(n, len(data)))
        device = next(self.model.parameters()).device
        return data.float_images().to(device), data.labels.to(device)


def load_target(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    data: str | None = None,
    data_dir: str | None = None,
    data_seed: int | None = None,
    checkpoint: str | int = "latest",
) -> Target:
    """Load ``path`` — a run folder (its checkpoint ``checkpoint``: ``latest``, ``best`` or
    ``epoch-N``), a checkpoint ``.json`` or a weights ``.safetensors`` — with the model
    rebuilt by ``create_model`` in eval mode; anything else (a pickle under any name, weights
    that do not fit the model, a damaged checkpoint) is a ``CheckpointError``.
    ``data``/``data_dir`` override (or, for a bare weights file, supply) the dataset the run
    was trained on; a relative ``data_dir`` stored in a run is read relative to the run."""
    from ..models import create_model

    path = Path(path)
    # read_weights refuses, with what it accepts, a missing path, a pickle under any name,
    # a damaged checkpoint and weights that do not fit their model_config, so the strict
    # load below cannot fail
    stored = read_weights(path, checkpoint=checkpoint)
    run_dir: Path | None = None
    if path.is_dir():
        # a run folder holds checkpoints/; a folder of checkpoints is inside its run folder
        run_dir = path if (path / CHECKPOINT_DIR).is_dir() else path.parent
    model = create_model(**stored.model_config)
    model.load_state_dict(stored.state, strict=True)
    model.input_shape = stored.input_shape
    model = model.to(device).eval()
    config = stored.config
    seed = config.get("data_seed", 0) if data_seed is None else data_seed
    return Target(
        model=model,
        model_config=dict(stored.model_config),
        source=path,
        run_dir=run_dir,
        data=data or config.get("data"),
        data_dir=data_dir if data_dir is not None else config.get("data_dir"),
        data_seed=int(seed),
        weights_sha256=tensors_sha256(stored.state),
        checkpoint=stored.describe(),
    )


def add_target_arguments(parser: Any, *, n_default: int | None = 1000) -> None:
    """The arguments every evaluation command shares: PATH, --data, --data-dir, --n,
    --device, --out, --overwrite."""
    parser.add_argument(
        "path",
        type=Path,
        metavar="RUN_DIR|CHECKPOINT",
        help="a run folder (its --checkpoint), a checkpoint .json or a weights .safetensors",
    )
    parser.add_argument(
        "--checkpoint",
        default="latest",
        metavar="WHICH",
        help="which checkpoint of a run folder: latest, best (highest test accuracy) or "
        "epoch-N (default: latest)",
    )
    parser.add_argument(
        "--data", help="dataset (default: the run's own; required for a bare .safetensors)"
    )
    parser.add_argument("--data-dir", help="the dataset's folder (default: the run's own)")
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
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:K or auto (default: cpu)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: RUN_DIR/<command>, or beside the file)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results already in the output folder that came from other settings",
    )


def target_from_args(args: Any) -> Target:
    """Load the target the shared arguments name (``--device auto`` picks CUDA when present)."""
    from ..train.distributed import resolve_device

    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be ≥ 1, got {args.n}")
    return load_target(
        args.path,
        device=resolve_device(args.device),
        data=args.data,
        data_dir=args.data_dir,
        checkpoint=args.checkpoint,
    )
