"""Named attack suites and attack specs (``pgd20-linf:eps=0.01,steps=50``).

A spec is a preset name (``robustode attacks`` lists them), optionally
followed by ``:key=value,key=value`` overrides; values are read by
:func:`robustode.options.parse_value`: int, float, a fraction (``eps=8/255``),
bool (``true``/``false``) or text. The peers' option names (``n_queries``,
``alpha``, ``n_restarts``) are aliases (:data:`robustode.attacks.presets.ALIASES`).
A spec's **id** is its text: it names the spec's folder of per-batch results and
its row of the report.

Suites (``SUITES``; add one with :func:`register_suite`):

- ``paper``: SONet's table — PGD-20/1000 in L∞ and L2, CW-L∞, SPSA;
- ``autoattack``: AutoAttack's standard version — or its rand version
  (``autoattack:version=rand``, APGD-CE and APGD-DLR with EOT) when the
  model's outputs are random by AutoAttack's own check (5 passes; see
  :func:`autoattack_spec`); the spec's id and the report's notes say which;
- ``full``: ``paper`` + APGD-CE, APGD-T, FAB-T, Square, AutoAttack (chosen as
  in ``autoattack``) and, for models with ODE blocks, the adaptive
  (solver-substitution) PGD attacks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks import Attack, attack_preset, check_randomness, create_attack, has_ode_blocks
from ..errors import InputError
from ..options import parse_value, unknown_name

PAPER = ("pgd20-linf", "pgd1000-linf", "pgd20-l2", "pgd1000-l2", "cw-linf", "spsa")
AUTOATTACK = ("autoattack",)
AUTOATTACK_RAND = "autoattack:version=rand"
PROBE_IMAGES = 16


def probe_images(model: nn.Module, size: int = 32) -> torch.Tensor:
    """Images the randomness check can feed ``model`` when no test images are at hand: uniform
    noise in [0, 1] from a fixed seed, (16, C, size, size) with C from the model's
    ``model_config`` (else 3), on the model's device."""
    config = getattr(model, "model_config", None)
    channels = config.get("in_channels", 3) if isinstance(config, dict) else 3
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.rand(PROBE_IMAGES, int(channels), size, size, generator=generator).to(device)


def autoattack_spec(model: nn.Module | None, images: torch.Tensor | None = None) -> str:
    """``autoattack``, or ``autoattack:version=rand`` when ``model``'s outputs are random.

    AutoAttack's check (``check_randomized``): five passes over the images
    (the first 250 of ``images``, else :func:`probe_images`); random if two
    passes' L2-normalised logits differ by more than 1e-4. A model the probe
    cannot run is one error line asking for the version to be named.
    """
    if model is None:
        return AUTOATTACK[0]
    x = probe_images(model) if images is None else images
    try:
        check = check_randomness(model, x)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            "--suite autoattack checks whether the model's outputs are random (AutoAttack's "
            f"check), and {tuple(x.shape)} probe images did not run through it "
            f"({str(exc).splitlines()[0]}); name the version instead: --attacks "
            "autoattack:version=standard or autoattack:version=rand"
        ) from None
    return AUTOATTACK_RAND if check.random else AUTOATTACK[0]


ADAPTIVE = (
    "adaptive-pgd20-linf",
    "adaptive-pgd1000-linf",
    "adaptive-pgd20-linf:substitute=per_sample",
)


def _full(model: nn.Module | None) -> list[str]:
    specs = [*PAPER, "apgd-ce", "apgd-t", "fab-t", "square", autoattack_spec(model)]
    if model is not None and has_ode_blocks(model):
        specs += ADAPTIVE
    return specs


SUITES: dict[str, Callable[[nn.Module | None], list[str]]] = {
    "paper": lambda model: list(PAPER),
    "autoattack": lambda model: [autoattack_spec(model)],
    "full": _full,
}


def register_suite(name: str, specs: Callable[[nn.Module | None], Sequence[str]]) -> None:
    """Add a suite: ``specs(model)`` returns its attack specs (the model may be None)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise InputError(f"a suite name is lower-case letters, digits, '-' and '_'; got '{name}'")
    SUITES[name] = lambda model: list(specs(model))


def list_suites() -> list[str]:
    return list(SUITES)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation: a preset name with overrides; ``id`` is its text."""

    id: str
    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def create(self, *, seed: int | None = None) -> Attack:
        """The attack; ``seed`` (if the preset takes one and the spec sets none) seeds it."""
        options = dict(self.options)
        if seed is not None and "seed" in attack_preset(self.name).options:
            options.setdefault("seed", seed)
        return create_attack(self.name, **options)

    @property
    def file_name(self) -> str:
        """The id made safe as a folder name (with a short hash when anything was replaced)."""
        safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", self.id)
        if safe == self.id:
            return safe
        return f"{safe}-{hashlib.sha256(self.id.encode()).hexdigest()[:8]}"


def parse_spec(text: str) -> AttackSpec:
    """``NAME`` or ``NAME:key=value,…``; an unknown name or option is one ValueError."""
    text = text.strip()
    name, sep, rest = text.partition(":")
    name = name.strip()
    preset = attack_preset(name)  # an unknown name: one AttackInputError (ValueError)
    accepted = preset.options
    options: dict[str, Any] = {}
    if sep:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise InputError(
                    f"attack spec '{text}': expected NAME:key=value,key=value, got '{item}'"
                )
            options[key] = parse_value(value.strip())
    try:
        options = preset.canonical(options)  # n_queries → queries, alpha → step_size, …
    except ValueError as exc:
        raise InputError(f"attack spec '{text}': {exc}") from None
    spec = AttackSpec(text, name, options)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise InputError(
            f"attack '{name}' has no option {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted)}"
        )
    try:
        spec.create()
    except (ValueError, TypeError) as exc:
        raise InputError(f"attack spec '{text}': {exc}") from None
    return spec


def split_specs(text: str) -> list[str]:
    """A comma list of specs: ``"pgd20-linf:eps=8/255,steps=50,spsa"`` → ``["pgd20-linf:eps=8/255,
    steps=50", "spsa"]`` (a ``key=value`` part without ':' continues the spec before it)."""
    items: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if items and ":" in items[-1] and "=" in part and ":" not in part:
            items[-1] += "," + part
        else:
            items.append(part)
    return items


def resolve_attacks(
    suite: str | None, attacks: str | Sequence[str] | None, model: nn.Module | None = None
) -> list[AttackSpec]:
    """The suite's specs then the explicit ones, duplicates (same id) dropped, in order.

    ``attacks``: a list of specs or one comma-separated string of them (:func:`split_specs`).
    """
    texts: list[str] = []
    if suite is not None:
        if suite not in SUITES:
            raise InputError(unknown_name("suite", suite, SUITES))
        texts += SUITES[suite](model)
    if isinstance(attacks, str):
        attacks = split_specs(attacks)
    elif attacks is not None and not all(isinstance(a, str) for a in attacks):
        raise InputError(
            f"attacks must be a comma-separated string or a list of spec strings, got {attacks!r}"
        )
    texts += [a.strip() for a in (attacks or ()) if a.strip()]
    if not texts:
        raise InputError("no attacks: name a suite or give attack specs")
    specs: dict[str, AttackSpec] = {}
    for text in texts:
        spec = parse_spec(text)
        specs.setdefault(spec.id, spec)
    return list(specs.values())


__all__ = [
    "ADAPTIVE",
    "AUTOATTACK",
    "AUTOATTACK_RAND",
    "PAPER",
    "SUITES",
    "AttackSpec",
    "autoattack_spec",
    "list_suites",
    "parse_spec",
    "probe_images",
    "register_suite",
    "resolve_attacks",
    "split_specs",
]
