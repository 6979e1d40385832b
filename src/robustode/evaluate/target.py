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
    download: bool = False  # fetch CIFAR into data_dir when it is missing

    @property
    def external(self) -> bool:
        """A model built by a factory the user named (``--model``), not a registered one."""
        return "factory" in self.model_config

    def default_out_dir(self, command: str) -> Path:
        """``RUN_DIR/<command>`` for a run folder, else ``<stem>-<command>/`` beside the file."""
        if self.run_dir is not None:
            return self.run_dir / command
        if self.external and self.checkpoint is None:
            # no weights file to sit beside: a folder named after the factory, here
            name = self.model_config["factory"].rpartition(":")[2]
            return Path(f"{name}-{command}")
        return self.source.with_name(f"{self.source.stem}-{command}")

    def report_meta(self) -> dict[str, Any]:
        """What an evaluation report says about the model and its data (``run_evaluation``'s
        ``meta``)."""
        return {
            "source": str(self.source),
            "factory": self.model_config.get("factory"),
            "factory_args": self.model_config.get("args"),
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
        data = load_dataset(
            self.data,
            split="test",
            root=self.data_dir,
            seed=self.data_seed,
            download=self.download,
        )
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
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    data: str | None = None,
    data_dir: str | None = None,
    data_seed: int | None = None,
    checkpoint: str | int = "latest",
    model: str | None = None,
    model_args: dict[str, Any] | None = None,
    weights: str | Path | None = None,
) -> Target:
    """Load ``path`` — a run folder (its checkpoint ``checkpoint``: ``latest``, ``best`` or
    ``epoch-N``), a checkpoint ``.json`` or a weights ``.safetensors`` — with the model
    rebuilt by ``create_model`` in eval mode; anything else (a pickle under any name, weights
    that do not fit the model, a damaged checkpoint) is a ``CheckpointError``.

    Your own model: ``model`` names a factory (``pkg.module:function`` or
    ``file.py:function``, :mod:`robustode.models.external`) called with ``model_args``;
    ``weights`` (safetensors, or a PyTorch state dict through ``weights_only``) are loaded
    into it strictly. A run trained from a factory is read from ``path`` only when the same
    ``model`` is named: robustode never imports code because a file names it.

    ``data``/``data_dir`` override (or, for a bare weights file or a factory, supply) the
    dataset; a relative ``data_dir`` is made absolute against the working directory, a run's
    own against its folder."""
    if model is not None:
        return _load_external(
            path, model, model_args, weights, device=device, data=data, data_dir=data_dir,
            data_seed=data_seed, checkpoint=checkpoint,
        )  # fmt: skip
    if weights is not None:
        raise InputError(
            f"{spell('weights')} loads a state dict into your own model, named with "
            f"{spell('model')} MODULE:FUNCTION or FILE.py:FUNCTION; robustode's own "
            "checkpoints and run folders are given as the path"
        )
    if path is None:
        raise InputError(
            f"name what to evaluate: a run folder or checkpoint, or {spell('model')} "
            "MODULE:FUNCTION (or FILE.py:FUNCTION) with its weights"
        )
    from ..models import create_model

    path = Path(path)
    # read_weights refuses, with what it accepts, a missing path, a pickle under any name,
    # a damaged checkpoint and weights that do not fit their model_config, so the strict
    # load below cannot fail
    stored = read_weights(path, checkpoint=checkpoint)
    factory = stored.model_config.get("factory")
    if factory is not None:
        raise InputError(
            f"{path} holds a model built by the factory {factory!r}; pass {spell('model')} "
            f"{factory} to load it (robustode imports code only when you name it)"
        )
    run_dir = _run_dir_of(path)
    net = create_model(**stored.model_config)
    net.load_state_dict(stored.state, strict=True)
    net.input_shape = stored.input_shape
    net = net.to(device).eval()
    return _target(net, stored, path, run_dir, data, data_dir, data_seed)


def _run_dir_of(path: Path) -> Path | None:
    if not path.is_dir():
        return None
    # a run folder holds checkpoints/; a folder of checkpoints is inside its run folder
    return path if (path / CHECKPOINT_DIR).is_dir() else path.parent


def _absolute_data_dir(data_dir: str | None, run_dir: Path | None) -> str | None:
    """A data folder as an absolute path. One the user typed is relative to the working
    directory; a run's own (runs now store it absolute; older ones as typed) is tried there,
    then beside the run folder."""
    if data_dir is None:
        return None
    folder = Path(data_dir).expanduser()
    if not folder.is_absolute():
        here = Path.cwd() / folder
        if run_dir is not None and not here.exists() and (run_dir.parent / folder).exists():
            here = run_dir.parent / folder
        folder = here
    return str(folder.resolve())


def _target(
    net: nn.Module,
    stored: Any,
    path: Path,
    run_dir: Path | None,
    data: str | None,
    data_dir: str | None,
    data_seed: int | None,
) -> Target:
    config = stored.config
    seed = config.get("data_seed", 0) if data_seed is None else data_seed
    if data_dir is not None:
        folder = _absolute_data_dir(data_dir, None)
    else:
        folder = _absolute_data_dir(config.get("data_dir"), run_dir)
    return Target(
        model=net,
        model_config=dict(stored.model_config),
        source=path,
        run_dir=run_dir,
        data=data or config.get("data"),
        data_dir=folder,
        data_seed=int(seed),
        weights_sha256=tensors_sha256(stored.state),
        checkpoint=stored.describe(),
    )


def _load_external(
    path: str | Path | None,
    spec: str,
    model_args: dict[str, Any] | None,
    weights: str | Path | None,
    *,
    device: str | torch.device,
    data: str | None,
    data_dir: str | None,
    data_seed: int | None,
    checkpoint: str | int,
) -> Target:
    from ..models.external import (
        build_external,
        is_factory_spec,
        load_external_weights,
        normalize_factory_spec,
    )

    if not is_factory_spec(spec):
        raise InputError(
            f"{spell('model')} takes MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}; "
            "robustode's own models are evaluated from their run folder or checkpoint"
        )
    if path is not None and weights is not None:
        raise InputError(
            f"give either a run folder/checkpoint trained from {spec} or {spell('weights')}, "
            "not both"
        )
    if path is not None:
        # a run robustode trained from this factory: its checkpoint names the factory
        path = Path(path)
        stored = read_weights(path, checkpoint=checkpoint)
        recorded = stored.model_config.get("factory")
        if recorded is None or normalize_factory_spec(recorded) != normalize_factory_spec(spec):
            raise InputError(
                f"{path} was not trained from {spec} (its model: "
                f"{recorded or stored.model_config.get('name')}); pass the factory it names"
            )
        args = stored.model_config.get("args") or {}
        if model_args is not None and dict(model_args) != args:
            raise InputError(
                f"{path} was trained with the arguments {args}, not {dict(model_args)}"
            )
        net = build_external(spec, args)
        from ..train.checkpoint import weights_mismatch

        expected = {k: v.shape for k, v in net.state_dict().items()}
        problem = weights_mismatch(stored.state, expected)
        if problem:
            raise InputError(f"{path} does not fit the model {spec} builds: {problem}")
        net.load_state_dict(stored.state, strict=True)
        net.input_shape = stored.input_shape
        net = net.to(device).eval()
        return _target(net, stored, path, _run_dir_of(path), data, data_dir, data_seed)
    net = build_external(spec, model_args)
    notes: list[str] = []
    if weights is not None:
        notes = load_external_weights(net, weights)
    else:
        notes.append(f"no weights given: {spec} as its factory initialised it")
    net = net.to(device).eval()
    state = {k: v.detach() for k, v in net.state_dict().items()}
    source = Path(weights) if weights is not None else Path(spec.rpartition(":")[0])
    return Target(
        model=net,
        model_config=dict(net.model_config),
        source=source,
        run_dir=None,
        data=data,
        data_dir=_absolute_data_dir(data_dir, None),
        data_seed=int(data_seed or 0),
        weights_sha256=tensors_sha256(state),
        checkpoint=None if weights is None else {"file": str(weights), "epoch": None},
        notes=notes or None,
    )
