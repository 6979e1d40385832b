"""The model registry: ``create_model(name, **options)`` and ``list_models()``, as in timm.

Each architecture module registers builder functions with
:func:`register_model`. A builder's keyword parameters are its options; the
ODE options it passes on to its blocks are declared at registration, so
``create_model`` can reject anything else with one error that lists what the
model accepts.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError, ResourceError, spell
from ..nn.ode_block import name_ode_blocks
from ..options import unknown_name
from .base import RobustModel


class ModelConfigError(InputError):
    """An unknown model name, an unknown option, or an option value a model cannot take."""


# The most parameters create_model builds unless told otherwise (max_parameters=): a config
# from an untrusted file cannot make it allocate more. WRN-34-10, the largest model of the
# papers, has 46 M.
MAX_PARAMETERS = 1_000_000_000


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its builder and what the user sees in ``robustode models``."""

    name: str
    builder: Callable[..., RobustModel]
    paper: str
    summary: str
    ode_options: tuple[str, ...]

    @property
    def options(self) -> dict[str, Any]:
        """The builder's own options with their defaults (ODE options not included)."""
        params = inspect.signature(self.builder).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def accepted_options(self) -> list[str]:
        return [*self.options, *self.ode_options]

    @property
    def has_ode_blocks(self) -> bool:
        return bool(self.ode_options)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, paper: str, summary: str, ode_options: tuple[str, ...] = ()
) -> Callable[[Callable[..., RobustModel]], Callable[..., RobustModel]]:
    """Decorator: register ``builder`` under ``name``."""

    def decorate(builder: Callable[..., RobustModel]) -> Callable[..., RobustModel]:
        if name in _REGISTRY:
            raise RuntimeError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, paper, summary, tuple(ode_options))
        return builder

    return decorate


def list_models(*, ode: bool | None = None) -> list[str]:
    """Registered names, sorted; ``ode=True``/``False`` keeps those with/without ODE blocks."""
    return sorted(n for n, e in _REGISTRY.items() if ode is None or e.has_ode_blocks == ode)


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelConfigError(unknown_name("model", name, list_models())) from None


# Numeric options: (integer?, lower bound, bound included?). Checked before building, so a
# wrong type or range gets one line naming the option instead of an error from deep inside.
_NUMERIC_OPTIONS: dict[str, tuple[bool, float, bool]] = {
    "num_classes": (True, 2, True),
    "in_channels": (True, 1, True),
    "width": (True, 1, True),
    "blocks_per_stage": (True, 1, True),
    "downsample_kernel": (True, 3, True),
    "num_blocks": (True, 1, True),
    "depth": (True, 1, True),
    "widen_factor": (True, 1, True),
    "max_num_steps": (True, 1, True),
    "dropout": (False, 0.0, True),
    "gamma": (False, 0.0, True),
    "tol": (False, 0.0, False),
    "rtol": (False, 0.0, False),
    "atol": (False, 0.0, False),
    "step_size": (False, 0.0, False),
    "t1": (False, 0.0, False),
    "classifier_z0": (False, -math.inf, False),
}


# Upper bounds of the options that set a model's size: far beyond any real network, and
# checked before anything is built, so a crafted config (a checkpoint header naming
# blocks_per_stage=100000) is one line instead of minutes of building.
_UPPER_BOUNDS: dict[str, int] = {
    "num_classes": 100_000,
    "in_channels": 64,
    "width": 16_384,
    "blocks_per_stage": 1_000,
    "downsample_kernel": 4,
    "num_blocks": 1_000,
    "depth": 10_000,
    "widen_factor": 1_000,
    "max_num_steps": 100_000_000,
}


def _check_numbers(options: dict[str, Any]) -> None:
    for key, value in options.items():
        high = _UPPER_BOUNDS.get(key)
        if (
            high is not None
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > high
        ):
            raise ModelConfigError(f"{key} must be at most {high:,}, got {value!r}")
        if key not in _NUMERIC_OPTIONS or (key == "step_size" and value is None):
            continue
        integer, low, inclusive = _NUMERIC_OPTIONS[key]
        kind = "an integer" if integer else "a number"
        bound = f"≥ {low:g}" if inclusive else f"> {low:g}"
        ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
        ok = ok and math.isfinite(value) and (value >= low if inclusive else value > low)
        if not ok:
            what = f"{kind} {bound}" if math.isfinite(low) else f"a finite {kind[2:]}"
            raise ModelConfigError(f"{key} must be {what}, got {value!r}")


def _on_meta_device() -> bool:
    return torch.empty(0).device.type == "meta"


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def create_model(
    name: str | None = None,
    /,
    *,
    seed: int | None = None,
    max_parameters: int | None = None,
    **options: Any,
) -> RobustModel:
    """Build the model registered as ``name`` (see ``list_models()``) with ``options``.

    Common options: ``num_classes`` (10 or 100 for CIFAR), ``in_channels``
    (3, or 1 for the digits data), ``width``, ``normalize`` (None, "cifar10",
    "cifar100" or {"mean", "std"}). Models with ODE blocks also take the
    solver options (``method``, ``tol``/``rtol``/``atol``, ``step_size``,
    ``step_control``, ``detach_step_size``, ``adjoint``, ``t1``,
    ``max_num_steps``, ``backend``) and block options (``gamma``, ``z0``,
    ``activation``, ``norm``, and for SONet's classifier ``classifier_z0``
    and ``activation_placement``); every ODE block of the model gets them.

    ``name`` may also come as a keyword, so ``create_model(**model.model_config)``
    rebuilds a model. ``seed`` builds the weights under ``torch.manual_seed(seed)`` without
    disturbing the caller's random state. The model is first built on the meta device (no
    memory) and refused when it has more than ``max_parameters`` parameters (default
    :data:`MAX_PARAMETERS`).
    """
    if name is None:  # create_model(**model.model_config): the name travels as a key
        if "name" not in options:
            raise ModelConfigError(
                f"create_model needs a model name; choose one of: {', '.join(list_models())}"
            )
        name = options.pop("name")
    entry = model_entry(name)
    accepted = entry.accepted_options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ModelConfigError(
            f"model '{name}' has no option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted)}"
        )
    _check_numbers(options)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ModelConfigError(f"seed must be an integer, got {seed!r}")
    limit = MAX_PARAMETERS if max_parameters is None else max_parameters
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ModelConfigError(f"max_parameters must be a positive integer, got {limit!r}")
    try:
        if not _on_meta_device():
            with torch.device("meta"):
                count = parameter_count(entry.builder(**options))
            if count > limit:
                raise ResourceError(
                    f"model '{name}' with these options has {count:,} parameters, more than "
                    f"the limit of {limit:,}; pass {spell('max_parameters')} to build it anyway"
                )
        if seed is None:
            model = entry.builder(**options)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = entry.builder(**options)
    except (ModelConfigError, ResourceError):
        raise
    except (ValueError, TypeError) as err:
        raise ModelConfigError(f"model '{name}': {err}") from None
    # a deep copy: the caller may go on mutating what it passed (a normalize dict, say)
    config = {"name": name, **entry.options, **copy.deepcopy(options)}
    if seed is not None:
        config["seed"] = seed
    model.model_config = config
    name_ode_blocks(model)
    return model
