"""Solve sites: every place a model integrates an ODE, whoever wrote it.

robustode's own :class:`~robustode.nn.ODEBlock` layers are solve sites. So is
every call to ``torchdiffeq.odeint``, ``torchdiffeq.odeint_adjoint``,
``robustode.ode.odeint`` or ``robustode.ode.odeint_adjoint`` made inside any
``nn.Module`` while an :class:`Interception` is active: the call is routed
through robustode's engine (which computes what torchdiffeq 0.2.5 computes:
the same grid, outputs and gradients), its steps are recorded, and its solver
can be swapped — so the audit's solver substitution, tolerance sweeps and
batch-composition check, the step study and the adaptive attacks apply to a
user's torchdiffeq model exactly as to robustode's blocks.

A site found by interception is a :class:`CallSite`, keyed by the calling
line and the vector field (its module path in the model when it is one of the
model's modules), so ten blocks sharing one ``forward`` are ten sites. It
answers what an ODE block answers: ``solver`` (the deployed settings read
from the call, or the replacement a caller set), ``last_record``, ``nfe``.

How calls are found: ``from torchdiffeq import odeint`` binds the function in
the user's module, so patching ``torchdiffeq.odeint`` alone would miss it.
Entering an interception replaces every reference to those functions in the
namespaces of loaded modules (robustode's and torchdiffeq's own excepted), on
the ``torchdiffeq`` and ``robustode.ode`` packages, and in the attributes of
the model's modules; leaving it puts every one back. A reference hidden
elsewhere (a closure, a default argument) is not seen: such a model has no
call sites, and the checks that need one say so.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..ode import SolverConfig, StepRecord
from ..ode import odeint as robustode_odeint
from ..ode import odeint_adjoint as robustode_odeint_adjoint
from .ode_block import named_ode_blocks

# torchdiffeq's defaults (odeint's signature): what a call that sets nothing asks for
_DEFAULTS = {"method": "dopri5", "rtol": 1e-7, "atol": 1e-9}


def _targets() -> dict[int, tuple[Callable[..., Any], str]]:
    """id(function) → (function, "odeint" | "adjoint") for every function intercepted."""
    found: dict[int, tuple[Callable[..., Any], str]] = {
        id(robustode_odeint): (robustode_odeint, "odeint"),
        id(robustode_odeint_adjoint): (robustode_odeint_adjoint, "adjoint"),
    }
    torchdiffeq = sys.modules.get("torchdiffeq")
    if torchdiffeq is not None:
        for name, kind in (("odeint", "odeint"), ("odeint_adjoint", "adjoint")):
            fn = getattr(torchdiffeq, name, None)
            if callable(fn):
                found[id(fn)] = (fn, kind)
    return found


@dataclass
class CallSite:
    """One ``odeint`` call inside a model (see the module docstring); an ODE block's
    interface: ``solver``, ``last_record``, ``nfe``, ``module_path``."""

    name: str
    kind: str  # "odeint" or "adjoint"
    deployed: SolverConfig | None  # None: settings robustode cannot express (a scipy solver)
    replacement: SolverConfig | None = None
    last_record: StepRecord | None = None
    calls: int = 0

    @property
    def module_path(self) -> str:
        return self.name

    @property
    def solver(self) -> SolverConfig:
        if self.replacement is not None:
            return self.replacement
        if self.deployed is None:
            raise ValueError(f"solve site {self.name} uses a solver robustode cannot re-run")
        return self.deployed

    @solver.setter
    def solver(self, value: SolverConfig) -> None:
        # setting the deployed settings back means: run the call exactly as the model asks
        self.replacement = None if value == self.deployed else value

    @property
    def nfe(self) -> int:
        return 0 if self.last_record is None else self.last_record.nfe_forward


def _solver_of(t: Any, kwargs: dict[str, Any]) -> SolverConfig | None:
    """The settings a call asks for, as a SolverConfig (None where robustode has none)."""
    options = dict(kwargs.get("options") or {})
    method = kwargs.get("method") or _DEFAULTS["method"]
    try:
        rtol = float(kwargs["rtol"]) if "rtol" in kwargs else _DEFAULTS["rtol"]
        atol = float(kwargs["atol"]) if "atol" in kwargs else _DEFAULTS["atol"]
        t1 = float(t[-1] - t[0]) if isinstance(t, torch.Tensor) and t.numel() > 1 else 1.0
        config = SolverConfig(
            method=method,
            rtol=rtol,
            atol=atol,
            step_size=options.get("step_size") if method in _fixed_methods() else None,
            t1=abs(t1) or 1.0,
            step_semantics=kwargs.get("step_semantics", SolverConfig.step_semantics),
        )
    except (ValueError, TypeError, KeyError):
        return None
    return config


def _fixed_methods() -> tuple[str, ...]:
    from ..ode import FIXED_METHODS

    return tuple(FIXED_METHODS)


class Interception:
    """While active, ``odeint`` calls in any model are routed through robustode's engine,
    recorded and made swappable (see the module docstring). Re-entrant: an interception
    entered inside another reuses the outer one's sites."""

    _active: Interception | None = None

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model
        self.sites: dict[tuple[Any, ...], CallSite] = {}
        self._patched: list[tuple[Any, str, Any]] = []  # (namespace, name, original)
        self._outer: Interception | None = None
        self._depth = 0

    @classmethod
    def active(cls) -> Interception | None:
        return cls._active

    # ------------------------------------------------------------ entering and leaving
    def __enter__(self) -> Interception:
        outer = Interception._active
        if outer is not None:
            self._outer = outer
            outer._depth += 1
            return outer
        Interception._active = self
        self._depth = 1
        self._patch()
        return self

    def __exit__(self, *exc: object) -> None:
        target = self._outer or self
        target._depth -= 1
        if target._depth == 0:
            target._unpatch()
            Interception._active = None
        self._outer = None

    def _patch(self) -> None:
        targets = _targets()
        routed = {key: self._router(fn, kind) for key, (fn, kind) in targets.items()}

        def patch_dict(namespace: dict[str, Any]) -> None:
            for name, value in list(namespace.items()):
                key = id(value)
                if key in targets and value is targets[key][0]:
                    namespace[name] = routed[key]
                    self._patched.append((namespace, name, value))

        for module_name, module in list(sys.modules.items()):
            if module is None or module_name.split(".")[0] in ("robustode", "torchdiffeq"):
                continue
            namespace = getattr(module, "__dict__", None)
            if isinstance(namespace, dict):
                patch_dict(namespace)
        for package in ("torchdiffeq", "robustode.ode"):
            module = sys.modules.get(package)
            if module is not None:
                patch_dict(module.__dict__)
        if self.model is not None:
            for module in self.model.modules():
                patch_dict(module.__dict__)

    def _unpatch(self) -> None:
        for namespace, name, original in reversed(self._patched):
            namespace[name] = original
        self._patched.clear()

    # ------------------------------------------------------------ routing
    def _site(self, func: Any, t: Any, kind: str, kwargs: dict[str, Any]) -> CallSite:
        frame = sys._getframe(2)  # the model's code that called odeint
        where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
        field = self._module_path(func)
        key = (frame.f_code.co_filename, frame.f_lineno, field or id(func))
        site = self.sites.get(key)
        if site is None:
            label = field or getattr(func, "__qualname__", type(func).__name__)
            site = CallSite(f"{label} @ {where}", kind, _solver_of(t, kwargs))
            self.sites[key] = site
        return site

    def _module_path(self, func: Any) -> str | None:
        if self.model is None or not isinstance(func, nn.Module):
            return None
        for name, module in self.model.named_modules():
            if module is func:
                return name or "(model)"
        return None

    def _router(self, original: Callable[..., Any], kind: str) -> Callable[..., Any]:
        engine = robustode_odeint if kind == "odeint" else robustode_odeint_adjoint

        def routed(func: Any, y0: Any, t: Any, *args: Any, **kwargs: Any) -> Any:
            site = self._site(func, t, kind, kwargs)
            site.calls += 1
            if args:  # torchdiffeq's positional rtol, atol, method, options
                names = ("rtol", "atol", "method", "options")
                kwargs.update(dict(zip(names, args, strict=False)))
            if site.deployed is None and site.replacement is None:
                return original(func, y0, t, **kwargs)  # robustode cannot re-run it: as asked
            if site.replacement is not None:
                kwargs = _with_solver(kwargs, site.replacement)
            record = StepRecord()
            out = engine(func, y0, t, record=record, **kwargs)
            site.last_record = record
            return out

        routed.__wrapped__ = original  # type: ignore[attr-defined]
        routed.__name__ = getattr(original, "__name__", "odeint")
        return routed


def _with_solver(kwargs: dict[str, Any], solver: SolverConfig) -> dict[str, Any]:
    """The call's arguments with ``solver``'s method, tolerances and step control."""
    out = dict(kwargs)
    options = dict(out.get("options") or {})
    options.pop("step_size", None)
    if solver.step_size is not None:
        options["step_size"] = solver.step_size
    out.update(method=solver.method, rtol=solver.rtol, atol=solver.atol, options=options)
    if solver.step_control != "batch":
        out["step_control"] = solver.step_control
    if solver.detach_step_size is not None:
        out["detach_step_size"] = solver.detach_step_size
    if solver.step_semantics != SolverConfig.step_semantics:
        out["step_semantics"] = solver.step_semantics
    return out


@contextlib.contextmanager
def intercepting(model: nn.Module | None = None) -> Iterator[Interception]:
    """Route, record and expose every ``odeint`` call inside ``model`` (see
    :class:`Interception`) for the duration of the block."""
    with Interception(model) as interception:
        yield interception


def named_solve_sites(model: nn.Module) -> list[tuple[str, Any]]:
    """(name, site) of every ODE block of ``model`` and every call site an active
    interception has seen, in that order."""
    sites: list[tuple[str, Any]] = [(n or "(model)", b) for n, b in named_ode_blocks(model)]
    active = Interception.active()
    if active is not None:
        sites += [(site.name, site) for site in active.sites.values() if site.deployed is not None]
    return sites


@torch.no_grad()
def discover_sites(model: nn.Module, x: torch.Tensor) -> list[tuple[str, Any]]:
    """Run ``model`` once on ``x``'s first image, in eval mode, so the active interception
    (if any) learns its call sites; returns :func:`named_solve_sites`."""
    if Interception.active() is not None:
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            model(x[:1])
        finally:
            for module, flag in flags:
                module.training = flag
    return named_solve_sites(model)


__all__ = [
    "CallSite",
    "Interception",
    "discover_sites",
    "intercepting",
    "named_solve_sites",
]
