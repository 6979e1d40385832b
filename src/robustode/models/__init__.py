"""Models of both papers behind one registry: ``create_model(name, **options)``.

>>> from robustode.models import create_model, list_models
>>> model = create_model("soblock", width=32, method="rk4", step_size=0.25)

Every model takes images in [0, 1] (NCHW) and returns logits, exposes its ODE
blocks (``ode_blocks()``) and its named perturbation points
(``perturbation_points()``, ``perturbed(fn)``).
"""

from . import odenet, preact_resnet, resnet10, sonet, wide_resnet  # noqa: F401  (registration)
from .base import RobustModel
from .registry import ModelConfigError, ModelEntry, create_model, list_models, model_entry

__all__ = [
    "ModelConfigError",
    "ModelEntry",
    "RobustModel",
    "create_model",
    "list_models",
    "model_entry",
]
