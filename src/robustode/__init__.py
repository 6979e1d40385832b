"""robustode: adversarial robustness seen through ODEs.

The everyday names, importable from the top level (loaded on first use, so
``import robustode`` stays light)::

    import robustode
    model = robustode.load_model(model="my_models.py:build", weights="w.safetensors")
    result = robustode.evaluate_model(model, x, y, threat="linf", eps=8 / 255)
    report = robustode.audit(model, x, y)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "create_model": "robustode.models",
    "list_models": "robustode.models",
    "create_attack": "robustode.attacks",
    "list_attacks": "robustode.attacks",
    "create_defense": "robustode.defenses",
    "odeint": "robustode.ode",
    "odeint_adjoint": "robustode.ode",
    "evaluate_model": "robustode.api",
    "load_model": "robustode.api",
    "ModelEvaluation": "robustode.api",
    "audit": "robustode.evaluate.audit",
    "load_dataset": "robustode.data",
}


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'robustode' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])


__all__ = ["__version__", *_NAMES]
