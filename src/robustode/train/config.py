"""``TrainConfig``: every setting of a training run, checked, and the papers' recipes as presets.

A config is built in layers — defaults, then a preset (``--preset``), then a
TOML or JSON file whose keys are the field names (``--config``), then
command-line flags — and checked once: an unknown key, a wrong type or a value
out of range is one :class:`ConfigError` naming the field and what it accepts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None


class ConfigError(InputError):
    """A training setting that is unknown, of the wrong type or out of range."""


AMP_MODES = ("none", "bf16", "fp16")
NONFINITE_LOSS = ("stop", "skip")

# Kinds of field: how a TOML/JSON value and a command-line flag are read and checked.
#   str, int, float, bool, "int?" (an int or None), "bool?", "str?", options (a table of
#   KEY = VALUE), ints (a list of integers)


def _m(kind: str, help: str, **checks: Any) -> dict[str, Any]:
    """A field's metadata: its kind, its one-line help, and its range or choices."""
    return {"kind": kind, "help": help, **checks}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults: a short natural-training run on the digits data.

    The optimiser is SGD as in both papers; the learning rate is piecewise
    constant: ``lr`` for the first ``milestones[0]`` epochs, then multiplied by
    ``lr_factor`` after each milestone (see :mod:`robustode.train.schedule`).
    """

    model: str = field(
        default="resnet10",
        metadata=_m(
            "str",
            "model name (see 'robustode models'), or your own: MODULE:FUNCTION or "
            "FILE.py:FUNCTION, called with --model-opt KEY=VALUE as its arguments",
        ),
    )
    model_options: dict[str, Any] = field(
        default_factory=dict,
        metadata=_m(
            "options",
            "model options as create_model takes them (num_classes and "
            "in_channels default to the data's)",
        ),
    )
    data: str = field(
        default="digits", metadata=_m("str", "dataset: cifar10, cifar100, digits or npz")
    )
    data_dir: str | None = field(
        default=None, metadata=_m("str?", "the dataset's folder, or for npz its .npz file")
    )
    download: bool = field(
        default=False, metadata=_m("bool", "download the dataset if it is missing")
    )
    data_seed: int = field(
        default=0, metadata=_m("int", "seed of the dataset's own split (digits)", low=0)
    )
    augment: bool | None = field(
        default=None,
        metadata=_m("bool?", "random crop (padding 4) + horizontal flip; unset: on for CIFAR only"),
    )
    defense: str = field(default="natural", metadata=_m("str", "training objective (defense) name"))
    defense_options: dict[str, Any] = field(
        default_factory=dict, metadata=_m("options", "options of the defense")
    )
    epochs: int = field(
        default=10,
        metadata=_m("int", "epochs to train (to extend a finished run, resume with more)", low=1),
    )
    batch_size: int = field(
        default=100, metadata=_m("int", "global batch size (split over DDP processes)", low=1)
    )
    lr: float = field(
        default=0.01, metadata=_m("float", "initial learning rate", low=0.0, strict=True)
    )
    momentum: float = field(default=0.9, metadata=_m("float", "SGD momentum", low=0.0, high=1.0))
    nesterov: bool = field(default=False, metadata=_m("bool", "Nesterov momentum"))
    weight_decay: float = field(
        default=0.0, metadata=_m("float", "L2 weight decay (SGD's, on every parameter)", low=0.0)
    )
    milestones: tuple[int, ...] = field(
        default=(), metadata=_m("ints", "epochs after which the lr is multiplied by lr_factor")
    )
    lr_factor: float = field(
        default=0.1, metadata=_m("float", "lr multiplier at each milestone", low=0.0, strict=True)
    )
    drop_last: bool = field(
        default=False, metadata=_m("bool", "drop the last partial batch of an epoch")
    )
    seed: int = field(
        default=0,
        metadata=_m(
            "int", "seed of the weights, the batch order and each epoch's randomness", low=0
        ),
    )
    checkpoint_every: int = field(
        default=1, metadata=_m("int", "write a checkpoint every N epochs (and at the end)", low=1)
    )
    keep_checkpoints: int = field(
        default=3, metadata=_m("int", "keep the newest N checkpoints (0: keep all)", low=0)
    )
    test_batch_size: int = field(
        default=500, metadata=_m("int", "batch size of the per-epoch test evaluation", low=1)
    )
    eval_subset: int | None = field(
        default=None,
        metadata=_m(
            "int?", "evaluate on the first N test images (unset: all; 0: no evaluation)", low=0
        ),
    )
    plateau_patience: int | None = field(
        default=None,
        metadata=_m(
            "int?",
            "stop before epochs when the test accuracy has not risen above its best for N "
            "epochs in a row (needs the per-epoch test evaluation; unset: train all epochs)",
            low=1,
        ),
    )
    device: str = field(
        default="auto",
        metadata=_m("str", "auto, cpu, cuda or cuda:N (under torchrun: the local rank's)"),
    )
    amp: str = field(
        default="none",
        metadata=_m(
            "str",
            "mixed precision on CUDA: none, bf16 or fp16 (with loss scaling); refused on CPU",
            choices=AMP_MODES,
        ),
    )
    channels_last: bool = field(
        default=False,
        metadata=_m("bool", "channels-last memory format (CUDA only; refused on CPU)"),
    )
    compile: bool = field(
        default=False, metadata=_m("bool", "torch.compile the model (CUDA only; refused on CPU)")
    )
    sync_batchnorm: bool = field(
        default=False,
        metadata=_m("bool", "convert BatchNorm to SyncBatchNorm under DDP (CUDA only)"),
    )
    max_steps_per_epoch: int | None = field(
        default=None, metadata=_m("int?", "stop each epoch after N steps (smoke runs)", low=1)
    )
    trace_eq16: bool = field(
        default=False,
        metadata=_m(
            "bool",
            "record LAD eq. 16's ratio ‖x_1‖/‖∂L/∂x_0‖ each epoch on the first batch of "
            "training images (eval mode; LAD's Fig. 2), for any defense",
        ),
    )
    nonfinite_loss: str = field(
        default="stop",
        metadata=_m(
            "str",
            "on a NaN or infinite loss: stop (the latest checkpoint is the last good state) "
            "or skip that batch's optimizer step (still stop if a whole epoch is skipped)",
            choices=NONFINITE_LOSS,
        ),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check_value(f.name, getattr(self, f.name), f.metadata)
            object.__setattr__(self, f.name, value)
        if list(self.milestones) != sorted(set(self.milestones)) or any(
            m < 1 for m in self.milestones
        ):
            raise ConfigError(
                f"milestones must be increasing positive epochs, got {list(self.milestones)}"
            )
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0")
        if self.plateau_patience is not None and self.eval_subset == 0:
            raise ConfigError(
                "plateau_patience needs the per-epoch test accuracy; eval_subset = 0 turns it off"
            )
        for name in ("model", "data", "defense"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must not be empty")
        try:
            torch.device("cpu" if self.device == "auto" else self.device)
        except (RuntimeError, ValueError):
            raise ConfigError(
                f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            ) from None

    # ------------------------------------------------------------------ dict forms
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (milestones as a list), as config.json stores them."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], *, base: TrainConfig | None = None
    ) -> TrainConfig:
        """``base`` (the defaults if None) with ``values`` over it.

        Option tables merge key by key, except that a layer naming another model
        (defense) than ``base`` starts that model's (defense's) options afresh.
        """
        accepted = field_names()
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(accepted)}"
            )
        merged = (base or cls()).to_dict()
        for name in ("model", "defense"):  # another model or defense: its options start afresh
            if name in values and values[name] != merged[name]:
                merged[f"{name}_options"] = {}
        for key, value in values.items():
            if key in ("model_options", "defense_options") and isinstance(value, Mapping):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return cls(**merged)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict(changes, base=self)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def field_info() -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, default, metadata) of every field — the CLI builds its flags from these."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        default = {} if f.default is dataclasses.MISSING else f.default
        out.append((f.name, default, dict(f.metadata)))
    return out


_KIND_WORDS = {
    "str": "a string",
    "str?": "a string",
    "int": "an integer",
    "int?": "an integer",
    "float": "a number",
    "bool": "true or false",
    "bool?": "true or false",
    "options": "a table of KEY = VALUE",
    "ints": "a list of integers",
}


def _check_value(name: str, value: Any, meta: Mapping[str, Any]) -> Any:
    kind = meta["kind"]
    if value is None and kind.endswith("?"):
        return None
    base = kind.rstrip("?")
    ok = True
    if base == "str":
        ok = isinstance(value, str)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        value = float(value) if ok else value
    elif base == "bool":
        ok = isinstance(value, bool)
    elif base == "options":
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        if ok:
            value = dict(value)
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must hold JSON values only, got {value!r}") from None
    elif base == "ints":
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        value = tuple(value) if ok else value
    if not ok:
        raise ConfigError(
            f"{name} must be {_KIND_WORDS[kind]}, got {value!r} ({type(value).__name__})"
        )
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value < low or (meta.get("strict") and value == low)):
        raise ConfigError(f"{name} must be {'>' if meta.get('strict') else '≥'} {low}, got {value}")
    if high is not None and value >= high:
        raise ConfigError(f"{name} must be < {high}, got {value}")
    return value


# ---------------------------------------------------------------------- presets
# The papers' training recipes. Model options (width, solver) stay the user's.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "sonet": (
        "SONet §5.1/reference code: CIFAR-10, 350 epochs, batch 100, SGD momentum 0.9, "
        "lr 0.01 ×0.1 after epochs 150 and 300, no weight decay, crop + flip",
        {
            "data": "cifar10",
            "epochs": 350,
            "batch_size": 100,
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "milestones": [150, 300],
            "lr_factor": 0.1,
            "augment": True,
        },
    ),
    "lad-cifar10": (
        "LAD §4: pre-activation ResNet-56 on CIFAR-10, 160 epochs, batch 128, SGD momentum "
        "0.9, weight decay 1e-4, lr 0.1 ÷10 after epochs 80 and 120, crop + flip",
        {
            "model": "preact_resnet56",
            "data": "cifar10",
            "epochs": 160,
            "batch_size": 128,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "milestones": [80, 120],
            "lr_factor": 0.1,
            "augment": True,
        },
    ),
    "lad-cifar100": (
        "LAD §4: pre-activation ResNet-56 on CIFAR-100, 300 epochs, batch 128, SGD momentum "
        "0.9, weight decay 1e-4, lr 0.1 ÷10 after epochs 150 and 225, crop + flip",
        {
            "model": "preact_resnet56",
            "data": "cifar100",
            "epochs": 300,
            "batch_size": 128,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "milestones": [150, 225],
            "lr_factor": 0.1,
            "augment": True,
        },
    ),
}


def preset(name: str) -> dict[str, Any]:
    """The field values of preset ``name`` (a copy)."""
    try:
        return json.loads(json.dumps(PRESETS[name][1]))
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The keys of a TOML (or JSON, e.g. a run's config.json) config file, unchecked."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if path.suffix != ".json" and tomllib is None:
        raise ConfigError(f"reading {path} needs Python ≥ 3.11 (tomllib); use a .json config")
    try:
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, json.JSONDecodeError) as exc:  # TOMLDecodeError is a ValueError
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table of keys")
    return values


def build_config(
    *,
    preset_name: str | None = None,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``) ← preset ← file ← overrides, checked once at each layer."""
    config = base or TrainConfig()
    if preset_name is not None:
        config = TrainConfig.from_dict(preset(preset_name), base=config)
    if file is not None:
        try:
            config = TrainConfig.from_dict(read_config_file(file), base=config)
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None
    if overrides:
        config = TrainConfig.from_dict(dict(overrides), base=config)
    return config
