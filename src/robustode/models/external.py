"""Your own model: a factory named on the command line and weights from a file.

``--model package.module:factory`` or ``--model path/to/file.py:factory`` names
a function returning an ``nn.Module`` that takes images in [0, 1] (NCHW) and
returns logits — any normalisation inside it, as RobustBench asks;
``--model-args KEY=VALUE`` are its keyword arguments. ``--weights FILE`` loads
a state dict into it: safetensors, or a PyTorch file read with PyTorch's
``weights_only`` loader, which builds tensors and containers only and refuses
any pickle that names code. A checkpoint's nested ``state_dict``/``model``
entry and DDP's ``module.`` prefixes are taken as they usually come; missing,
unexpected or mis-shaped tensors are listed.

robustode imports a factory only because the user named it: a checkpoint that
records one (a run trained with ``--model file.py:build``) is loaded only when
the same ``--model`` is given again — a file never makes robustode import code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..io import read_bytes_limited

WEIGHTS_FILE_BYTES = 16 << 30
_NESTED = ("state_dict", "model_state_dict", "model", "net", "network")


class ExternalModelError(InputError):
    """A factory that cannot be imported or called, or weights that do not fit its model."""


def is_factory_spec(text: Any) -> bool:
    """Whether ``text`` names a factory (``module:function`` or ``file.py:function``) rather
    than a registered model."""
    return isinstance(text, str) and ":" in text and not text.startswith(":")


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ExternalModelError(f"{path} does not exist; --model takes FILE.py:FUNCTION")
    # a name of its own per file and content: two files called model.py do not replace each
    # other, and an edited file is imported afresh rather than served from sys.modules
    content = read_bytes_limited(path, 64 << 20, what="model file")
    digest = hashlib.sha256(str(path.resolve()).encode() + b"\0" + content).hexdigest()[:12]
    name = f"robustode_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExternalModelError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # the file may import its neighbours
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ExternalModelError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(folder)
    return module


def normalize_factory_spec(spec: str) -> str:
    """``spec`` with a file's path made absolute (a run trained from ``model.py:build`` is
    then found again from any folder, and two spellings of one file compare equal)."""
    target, _, attribute = spec.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return f"{Path(target).expanduser().resolve()}:{attribute}"
    return spec


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The function ``spec`` names: ``package.module:function`` or ``path/file.py:function``."""
    if not is_factory_spec(spec):
        raise ExternalModelError(
            f"--model takes MODULE:FUNCTION or FILE.py:FUNCTION (or a registered model name), "
            f"got {spec!r}"
        )
    target, _, attribute = spec.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ExternalModelError(
                f"cannot import {target!r} ({exc}); --model takes MODULE:FUNCTION with the "
                "module on the Python path, or FILE.py:FUNCTION"
            ) from None
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:20]
            raise ExternalModelError(
                f"{target} has no {attribute!r}; it defines: {', '.join(public)}"
            )
    if not callable(factory):
        raise ExternalModelError(f"{spec} is not callable")
    return factory  # type: ignore[return-value]


def build_external(spec: str, args: dict[str, Any] | None = None) -> nn.Module:
    """Call the factory ``spec`` names with ``args``; the model it returns, in eval mode, with
    ``model.model_config = {"factory": spec, "args": args}`` for reports and checkpoints."""
    factory = load_factory(spec)
    args = dict(args or {})
    try:
        inspect.signature(factory).bind(**args)
    except TypeError as exc:
        raise ExternalModelError(f"{spec} does not take {args}: {exc}") from None
    except ValueError:
        pass  # a builtin without a signature: call it and see
    try:
        model = factory(**args)
    except Exception as exc:
        raise ExternalModelError(f"{spec}(**{args}) raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ExternalModelError(
            f"{spec} returned {type(model).__name__}, not a torch.nn.Module taking images in "
            "[0, 1] and returning logits"
        )
    model.model_config = {"factory": normalize_factory_spec(spec), "args": args}
    return model.eval()


def _as_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors of a loaded file, unwrapping the usual containers; (state, what was done)."""
    notes = []
    if isinstance(obj, dict):
        for key in _NESTED:
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                notes.append(f"took the '{key}' entry of {path.name}")
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise ExternalModelError(
            f"{path} holds {type(obj).__name__}, not a state dict (names → tensors)"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ExternalModelError(
            f"{path}: entries {', '.join(map(str, bad[:5]))} are not tensors; --weights takes a "
            "state dict (model.state_dict())"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
        notes.append("dropped DDP's 'module.' prefix")
    return state, notes


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A state dict from ``path``: safetensors, or PyTorch's format through its
    ``weights_only`` loader (tensors and containers only; a pickle naming code is refused)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    path = Path(path)
    data = read_bytes_limited(path, WEIGHTS_FILE_BYTES, what="weights file")
    if path.suffix == ".safetensors" or data[8:9] == b"{":  # an 8-byte length, then JSON
        try:
            return _as_state_dict(load_safetensors(data), path)
        except (SafetensorError, ValueError) as exc:
            if path.suffix == ".safetensors":
                raise ExternalModelError(f"{path} is not a safetensors file ({exc})") from None
    import io
    import pickle

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExternalModelError(
            f"{path} is refused: PyTorch's weights_only loader found more than tensors in it "
            f"({first}); robustode never runs code from a file — save model.state_dict() "
            "instead"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ExternalModelError(
            f"{path} is neither safetensors nor a PyTorch state dict ({exc})"
        ) from None
    return _as_state_dict(obj, path)


def load_external_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load ``path`` strictly into ``model``; missing, unexpected and mis-shaped tensors are
    listed. Returns notes on what was unwrapped."""
    from ..train.checkpoint import weights_mismatch

    state, notes = read_state_dict(path)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problem = weights_mismatch(state, expected)
    if problem:
        raise ExternalModelError(f"{path} does not fit the model: {problem}")
    model.load_state_dict(state, strict=True)
    return notes


__all__ = [
    "ExternalModelError",
    "build_external",
    "is_factory_spec",
    "load_external_weights",
    "load_factory",
    "normalize_factory_spec",
    "read_state_dict",
]
