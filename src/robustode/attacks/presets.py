"""Attacks by name, with the two papers' settings as defaults (``create_attack("pgd20-linf")``).

SONet (reference code, docs/references.md): PGD L∞ ε 0.031 step 0.003 and L2 ε 0.5 step 0.1, both
without random start, 20 or 1000 steps; CW-L∞ τ-based; SPSA ε 8/255, 20
iterations × 32 samples, δ 0.01, lr 0.01. LAD: FGSM and IFGSM-20 without
random start (α 0.5/255 at ε ≤ 1/255 for natural models, 2/255 at 8/255).
AutoAttack: ``autoattack`` with ``version`` standard | plus | rand | custom
and ``norm`` linf | l2 | l1, its compositions and budgets exactly
(:mod:`robustode.attacks.autoattack`); its members are presets of their own.

The peers' option names are accepted as aliases (:data:`ALIASES`) wherever the
preset has the option they stand for: AutoAttack's ``n_queries``, ``n_restarts``
and ``n_iter``, torchattacks' ``alpha`` (the step size), cleverhans' ``nb_iter``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..options import format_options as render_options
from ..options import parse_number, unknown_name
from .adaptive import SUBSTITUTES, SolverSubstitution
from .apgd import APGDCE, APGDDLR, APGDT
from .autoattack import autoattack
from .base import Attack, AttackInputError
from .carlini_wagner import CarliniWagnerLinf
from .fab import FAB, FABT
from .gradient import FGSM, IFGSM, PGD, CWMarginPGD, GradientAttack
from .spsa import SPSA
from .square import Square

# the peers' names → robustode's: AutoAttack (n_queries, n_restarts, n_iter), torchattacks
# (alpha = the step size), cleverhans (nb_iter); an alias applies where its target exists
ALIASES: dict[str, tuple[str, ...]] = {
    "n_queries": ("queries",),
    "n_restarts": ("restarts",),
    "alpha": ("step_size",),
    "n_iter": ("steps", "iterations"),
    "nb_iter": ("steps", "iterations"),
}


@dataclass(frozen=True)
class AttackPreset:
    name: str
    summary: str
    build: Callable[..., Attack]
    defaults: dict[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    base: str | None = None  # the preset an adaptive preset wraps

    def canonical(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """``overrides`` with the peers' names (:data:`ALIASES`) replaced by robustode's and
        numbers given as text read as numbers (``eps="8/255"`` → 0.0313…; no option of any
        preset takes numeric text)."""
        out: dict[str, Any] = {}
        for key, value in overrides.items():
            if isinstance(value, str):
                number = parse_number(value)
                value = value if number is None else number
            if key not in self.options and key in ALIASES:
                target = next((t for t in ALIASES[key] if t in self.options), None)
                if target is not None:
                    if target in overrides:
                        raise AttackInputError(
                            f"attack '{self.name}': {key} is another name for {target}; "
                            "give one of them"
                        )
                    key = target
            out[key] = value
        return out

    def create(self, **overrides: Any) -> Attack:
        overrides = self.canonical(overrides)
        unknown = sorted(set(overrides) - set(self.options))
        if unknown:
            raise AttackInputError(
                f"attack '{self.name}' has no option {', '.join(map(repr, unknown))}; "
                f"it accepts: {', '.join(self.options)}"
            )
        try:
            return self.build(**{**self.defaults, **overrides})
        except AttackInputError:
            raise
        except (ValueError, TypeError) as exc:  # an option value the attack cannot take
            raise AttackInputError(f"attack '{self.name}': {exc}") from None


def _options(cls: type) -> tuple[str, ...]:
    """Keyword options of ``cls`` and, through ``**options``, of its bases."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return tuple(dict.fromkeys(n for n in names if n not in ("steps_",)))


_PRESETS: dict[str, AttackPreset] = {}


def _add(name: str, summary: str, cls: type, fixed: tuple[str, ...] = (), **defaults: Any) -> None:
    options = tuple(o for o in _options(cls) if o not in fixed)
    _PRESETS[name] = AttackPreset(name, summary, cls, defaults, options)


SONET_LINF = {"norm": "linf", "eps": 0.031, "step_size": 0.003, "random_start": False}
SONET_L2 = {"norm": "l2", "eps": 0.5, "step_size": 0.1, "random_start": False}

_add("fgsm", "FGSM, ε 8/255 (LAD)", FGSM, ("steps", "step_size"), eps=8 / 255)
_add(
    "ifgsm20",
    "IFGSM, 20 steps of 2/255, ε 8/255, no random start (LAD)",
    IFGSM,
    ("random_start",),
    eps=8 / 255,
    steps=20,
    step_size=2 / 255,
)
for _steps in (20, 1000):
    _add(
        f"pgd{_steps}-linf",
        f"PGD-{_steps} L∞, ε 0.031, step 0.003, no random start (SONet)",
        PGD,
        steps=_steps,
        **SONET_LINF,
    )
    _add(
        f"pgd{_steps}-l2",
        f"PGD-{_steps} L2, ε 0.5, step 0.1, no random start (SONet)",
        PGD,
        steps=_steps,
        **SONET_L2,
    )
_add(
    "pgd-linf",
    "PGD L∞ with random start (Madry et al.): ε 8/255, 10 steps of 2/255",
    PGD,
    norm="linf",
    eps=8 / 255,
    steps=10,
    step_size=2 / 255,
    random_start=True,
)
_add(
    "cw-linf",
    "Carlini–Wagner τ-based L∞, 100 iterations, clipped to ε 0.031 (SONet reference)",
    CarliniWagnerLinf,
    eps=0.031,
)
_add(
    "cw-margin-linf",
    "PGD-20 on the CW margin, ε 0.031, step 0.003, no random start",
    CWMarginPGD,
    ("loss",),
    steps=20,
    **SONET_LINF,
)
_add(
    "spsa",
    "SPSA, ε 8/255, 20 iterations × 32 samples, δ 0.01, lr 0.01; one image at a time on a "
    "model with batch-shared step control (SONet)",
    SPSA,
    per_image="auto",
)
_add("apgd-ce", "APGD-CE, ε 8/255, 100 iterations (AutoAttack)", APGDCE, eps=8 / 255)
_add("apgd-dlr", "APGD-DLR, ε 8/255, 100 iterations (AutoAttack plus and rand)", APGDDLR, ("loss",))
_add("apgd-t", "APGD-T (DLR, 9 targets), ε 8/255, 100 iterations (AutoAttack)", APGDT, ("loss",))
_add(
    "fab",
    "FAB (untargeted), ε 8/255, 100 iterations, 5 restarts (AutoAttack plus)",
    FAB,
    ("targets",),
    restarts=5,
)
_add("fab-t", "FAB-T (9 targets), ε 8/255, 100 iterations (AutoAttack)", FABT)
_add(
    "square",
    "Square, L∞ ε 8/255, 5000 queries, p_init 0.8, AutoAttack's schedule (norm=l2|l1 too)",
    Square,
)
_AUTOATTACK_OPTIONS = (
    "version", "norm", "eps", "attacks", "steps", "queries", "eot_iter", "seed", "batch_size",
)  # fmt: skip
_PRESETS["autoattack"] = AttackPreset(
    "autoattack",
    "AutoAttack: version=standard|plus|rand|custom, norm=linf|l2|l1 (default standard, L∞ "
    "8/255; L2 0.5, L1 12), worst case per point",
    autoattack,
    {},
    _AUTOATTACK_OPTIONS,
)
_PRESETS["standard"] = AttackPreset(
    "standard",
    "the same as autoattack (AutoAttack's name for its standard version)",
    autoattack,
    {},
    _AUTOATTACK_OPTIONS,
)


def _adaptive(base: str) -> Callable[..., Attack]:
    def build(
        *,
        substitute: str = "fixed",
        substitute_steps: int = 16,
        tighten: float = 100.0,
        include_deployed: bool = True,
        **options,
    ) -> Attack:
        return SolverSubstitution(
            _PRESETS[base].create(**options),
            substitute,
            steps=substitute_steps,
            tighten=tighten,
            include_deployed=include_deployed,
        )

    return build


# Solver substitution (SONet §6 made adaptive): the base preset's settings, gradients from a
# substitute solver; the forward pass and the verdict stay on the deployed solver.
for _base in ("pgd20-linf", "pgd1000-linf", "pgd20-l2", "cw-margin-linf", "apgd-ce"):
    _PRESETS[f"adaptive-{_base}"] = AttackPreset(
        f"adaptive-{_base}",
        f"{_base}, then on the points it leaves robust the same with gradients through a "
        f"substitute solver ({' | '.join(SUBSTITUTES)}; default fixed = rk4, 16 steps); "
        "ODE models only",
        _adaptive(_base),
        {},
        ("substitute", "substitute_steps", "tighten", "include_deployed", *_PRESETS[_base].options),
        _base,
    )


def list_attacks() -> list[str]:
    """Preset names, in the order they are listed in ``robustode attacks``."""
    return list(_PRESETS)


def attack_preset(name: str) -> AttackPreset:
    try:
        return _PRESETS[name]
    except KeyError:
        pass
    # 'pgd30', 'pgd50-l2', 'ifgsm7': an iteration count the presets do not carry is an
    # option, not a name (difflib would offer pgd20-l2 for pgd30)
    counted = re.fullmatch(r"(pgd|ifgsm)(\d+)(?:-(linf|l2))?", name)
    if counted:
        kind, steps, norm = counted.groups()
        base = "ifgsm20" if kind == "ifgsm" else f"pgd20-{norm or 'linf'}"
        # the line begins as every unknown-name error does; the hint replaces difflib's
        raise AttackInputError(
            f"unknown attack '{name}'; choose one of: {', '.join(list_attacks())}; "
            f"an iteration count is an option: {base}:steps={steps}"
        )
    raise AttackInputError(unknown_name("attack", name, list_attacks()))


def _signature_defaults(build: Callable[..., Any]) -> dict[str, Any]:
    """Keyword defaults of a class (through ``**options``, of its bases) or of a function."""
    out: dict[str, Any] = {}
    inits = (
        [k.__dict__["__init__"] for k in build.__mro__ if "__init__" in k.__dict__]
        if isinstance(build, type)
        else [build]
    )
    for init in inits:
        params = list(inspect.signature(init).parameters.values())
        for p in params:
            if p.default is not p.empty and p.kind is not p.VAR_KEYWORD:
                out.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def attack_options(name: str) -> dict[str, Any]:
    """Every option of preset ``name`` with its default: the preset's own setting, else the
    attack's signature default (what ``robustode attacks NAME`` prints)."""
    preset = attack_preset(name)
    defaults = _signature_defaults(preset.build)
    if preset.base is not None:
        defaults = {**attack_options(preset.base), **defaults}
    defaults.update(preset.defaults)
    return {option: defaults.get(option) for option in preset.options}


def describe_preset(name: str, **overrides: Any) -> str:
    """What ``robustode attacks NAME [KEY=VALUE …]`` prints: the attack's description, its
    model calls per image, every option with its default (:func:`format_options`) and the
    peers' names it accepts."""
    preset = attack_preset(name)
    attack = preset.create(**overrides)
    aliases = []
    for alias, targets in ALIASES.items():
        target = next((t for t in targets if t in preset.options), None)
        if target is not None and alias not in preset.options:
            aliases.append(f"{alias}→{target}")
    lines = [
        attack.describe(),
        f"model calls per image at most: {attack.budget():,}",
        f"options (defaults): {format_options(name)}",
    ]
    if aliases:
        lines.append(f"aliases: {', '.join(aliases)}")
    return "\n".join(lines)


def format_options(name: str) -> str:
    """``eps=8/255, steps=10, …``: :func:`attack_options` as text, radii as k/255."""
    options = attack_options(name)
    return render_options(options, str(options.get("norm") or "linf"))


def create_attack(name: str, /, **overrides: Any) -> Attack:
    """The attack preset ``name`` with ``overrides`` (e.g. ``eps=4/255, steps=50, seed=1``)."""
    return attack_preset(name).create(**overrides)


__all__ = [
    "ALIASES",
    "AttackPreset",
    "GradientAttack",
    "attack_options",
    "attack_preset",
    "create_attack",
    "describe_preset",
    "format_options",
    "list_attacks",
]
