"""Option values as users type them, and radii as users read them.

- :func:`parse_value`: one ``KEY=VALUE`` value (attack specs, ``--defense-opt``,
  ``--model-opt``): ``true``/``false``, ``none``/``null``, an int, a float, a
  fraction such as ``8/255``, a JSON list or object, else the text itself.
- :func:`parse_option`: ``KEY=VALUE`` → ``(key, value)``.
- :func:`format_eps`: a radius as ``k/255`` when it is a multiple of 1/255
  (or of 0.5/255), else ``%g`` — so a default of 8/255 prints as ``8/255``,
  not ``0.03137254901960784``.
- :func:`format_options`: ``eps=8/255, steps=10, …`` for a listing of defaults.
- :func:`same_eps`: whether two radii name the same threat model (relative
  tolerance :data:`EPS_REL_TOL`, 2 %): SONet's 0.031 and 8/255 = 0.03137…
  differ by 1.2 %, and the papers mean the same budget by both.
- :func:`suggest`, :func:`unknown_name`: "did you mean" for a near-miss name
  (a prefix match, else difflib), after the list of choices.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from .errors import InputError

EPS_REL_TOL = 0.02
_FRACTION = re.compile(r"\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*/\s*([0-9]*\.?[0-9]+)\s*")


def parse_number(text: str) -> float | int | None:
    """``text`` as an int, a float or a fraction (``8/255``); None when it is none of them.
    A zero denominator is an :class:`InputError`."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    match = _FRACTION.fullmatch(text)
    if match is None:
        return None
    num, den = float(match.group(1)), float(match.group(2))
    if den == 0:
        raise InputError(f"'{text}': a fraction's denominator must not be 0")
    return num / den


def parse_value(text: str) -> Any:
    """One option value: ``true``/``false`` → bool, ``none``/``null`` → None, an int, a float,
    a fraction (``8/255`` → 0.0313…), JSON for a list, an object or a quoted string
    (``[1, 2]``, ``"8"``), else the text itself. A superset of what the command line read as
    JSON before (numbers, true, null, lists), plus fractions."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    number = parse_number(stripped)
    if number is not None:
        return number
    if stripped[:1] in ("[", "{") or (len(stripped) > 1 and stripped[0] == stripped[-1] == '"'):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    return text


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → ``(KEY, parse_value(VALUE))``; anything else is one InputError."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"expected KEY=VALUE (e.g. eps=8/255), got '{text}'")
    return key, parse_value(value)


def format_eps(eps: float, norm: str = "linf", digits: int = 4) -> str:
    """An L∞ radius as ``k/255`` when it is a multiple of 1/255 up to 255/255 (``0.5/255``
    for a half below 16/255), else ``digits`` significant digits; L2 and L1 radii are not
    pixel steps: always digits."""
    k = eps * 255
    if norm == "linf" and 0 < eps < 1 and math.isfinite(k):
        near = round(2 * k) / 2
        whole = near == int(near)
        if abs(k - near) <= 1e-9 * max(1.0, k) and (whole or near < 16):
            return f"{near:g}/255"
    return f"{eps:.{digits}g}"


def format_options(options: dict[str, Any], norm: str = "linf") -> str:
    """``eps=8/255, steps=10, base='natural'``: radii and step sizes (keys ``eps``,
    ``step_size``, ``alpha``) through :func:`format_eps`, text quoted, the rest as ``str``.
    What a listing of options with their defaults prints (attacks, defenses)."""
    parts = []
    for key, value in options.items():
        if key in ("eps", "step_size", "alpha") and isinstance(value, float):
            text = format_eps(value, norm)
        else:
            text = repr(value) if isinstance(value, str) else str(value)
        parts.append(f"{key}={text}")
    return ", ".join(parts)


def same_eps(a: float, b: float, rel: float = EPS_REL_TOL) -> bool:
    """Whether radii ``a`` and ``b`` agree within ``rel`` of the larger (2 % by default)."""
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _plain(text: str) -> str:
    return text.lower().replace("-", "").replace("_", "")


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``choices``, else ``''``: the shortest choice
    that starts with ``name`` (ignoring case, '-' and '_': 'pgd' → 'pgd-linf', 'cifar-10' →
    'cifar10'), else difflib's closest match."""
    choices = list(choices)
    prefixed = sorted(
        (c for c in choices if _plain(c).startswith(_plain(name))),
        key=lambda c: (len(c), sum(ch.isdigit() for ch in c)),
    )
    close = prefixed[:1] or difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close and close[0] != name else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """One line: ``unknown {kind} 'name'; choose one of: a, b, c; did you mean 'x'?`` (the
    suggestion last, so the line still begins as every unknown-name error always has)."""
    choices = list(choices)
    hint = suggest(name, choices)
    hint = f"; did you mean {hint[len(' (did you mean ') : -1]}" if hint else ""
    return f"unknown {kind} '{name}'; choose one of: {', '.join(choices)}{hint}"


__all__ = [
    "EPS_REL_TOL",
    "format_eps",
    "format_options",
    "parse_number",
    "parse_option",
    "parse_value",
    "same_eps",
    "suggest",
    "unknown_name",
]
