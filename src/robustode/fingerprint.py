"""Fingerprints: what produced a result, read from the objects themselves.

A cached or reported number is keyed by everything it depends on — the
weights as loaded (a hash of the tensors, not of a file), the model's full
configuration as it runs (its class, structure, ``model_config`` and every ODE
block's solver, so ``model.set_solver(...)`` changes it), the exact images and
labels, the resolved settings of the attack, and the robustode and torch
versions. Nothing here trusts what a caller says about the model: it is all
read from the model. :func:`changes` says, leaf by leaf, what differs between
two fingerprints, for messages like ``model.solvers.stem.method: dopri5 → euler``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import __version__

FINGERPRINT_FORMAT = 1
_MAX_DEPTH = 8


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the named tensors in name order: name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(repr(tuple(t.shape)).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        digest.update(t.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """The hash of a model's parameters and buffers as they are now."""
    return tensors_sha256(model.state_dict())


def inputs_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """The hash of the exact images (float32 values) and labels an evaluation runs on."""
    digest = hashlib.sha256()
    digest.update(repr(tuple(x.shape)).encode())
    digest.update(x.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().long().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _qualname(obj: Any) -> str:
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def settings_of(obj: Any, _depth: int = 0) -> Any:
    """A JSON description of ``obj``'s settings: plain values as they are, dataclasses and
    objects by their public attributes, modules by their class and weights hash, functions
    by name. Used to key results by an attack's resolved settings."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if _depth > _MAX_DEPTH:
        return _qualname(obj)
    if isinstance(obj, list | tuple):
        return [settings_of(v, _depth + 1) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): settings_of(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        if obj.numel() <= 64:
            return {"tensor": obj.detach().cpu().tolist(), "dtype": str(obj.dtype)}
        return {"tensor_sha256": tensors_sha256({"": obj}), "shape": list(obj.shape)}
    if isinstance(obj, nn.Module):
        return model_fingerprint(obj)
    if isinstance(obj, torch.Generator | torch.device | torch.dtype):
        return _qualname(obj) if isinstance(obj, torch.Generator) else str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {
            "type": _qualname(obj),
            **{k: settings_of(v, _depth + 1) for k, v in fields.items()},
        }
    if isinstance(obj, type):
        return _qualname(obj)
    if isinstance(obj, functools.partial):
        return {
            "partial": settings_of(obj.func, _depth + 1),
            "args": settings_of(obj.args, _depth + 1),
            "keywords": settings_of(obj.keywords, _depth + 1),
        }
    if inspect.isroutine(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
    if hasattr(obj, "__dict__"):
        public = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
        return {
            "type": _qualname(obj),
            **{k: settings_of(v, _depth + 1) for k, v in public.items()},
        }
    return repr(obj)


def ode_solvers(model: nn.Module) -> dict[str, Any]:
    """{name: solver settings} of every solve site of ``model``: its robustode ODE blocks
    and the ``odeint`` calls an active interception has seen in it."""
    from .nn.solve_sites import named_solve_sites

    return {name: settings_of(site.solver) for name, site in named_solve_sites(model)}


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a result depends on in ``model``, read from the model itself."""
    config = getattr(model, "model_config", None)
    try:
        config = json.loads(json.dumps(config)) if config is not None else None
    except (TypeError, ValueError):
        config = settings_of(config)
    return {
        "class": _qualname(model),
        "model_config": config,
        "solvers": ode_solvers(model),
        "structure_sha256": hashlib.sha256(repr(model).encode()).hexdigest(),
        "weights_sha256": weights_sha256(model),
        "training": bool(model.training),
    }


def versions() -> dict[str, str]:
    return {"robustode": __version__, "torch": torch.__version__}


def digest(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr).encode()
    ).hexdigest()


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=repr) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:16] + "…" + text[-8:]


def changes(old: Any, new: Any, prefix: str = "", limit: int = 6) -> list[str]:
    """Leaf-by-leaf differences between two JSON values: ``path: old → new``."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(out) >= limit or a == b:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key, "(none)"), b.get(key, "(none)"), f"{path}.{key}" if path else key)
            return
        out.append(f"{path or '(value)'}: {_short(a)} → {_short(b)}")

    walk(old, new, prefix)
    return out


__all__ = [
    "FINGERPRINT_FORMAT",
    "changes",
    "digest",
    "inputs_sha256",
    "model_fingerprint",
    "ode_solvers",
    "settings_of",
    "tensors_sha256",
    "versions",
    "weights_sha256",
]
