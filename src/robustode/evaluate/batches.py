"""The per-(attack, batch) result files of an evaluation: written with a fingerprint and a
checksum, and validated on every read — never merged on trust.

A batch file ``points/<attack>/batch-<k>.json`` holds::

    format           "robustode-batch-2"
    fingerprint      digest of what produced it: the model (weights, config, solvers), the
                     exact images and labels, batch k's slice, the attack's resolved settings
                     (its seed for batch k included) and the robustode and torch versions
    attack, batch, start, count
    success, clean_correct   0/1 per point; a point not clean-correct counts as broken
    queries                  model calls per point (≥ 0)
    first_adversarial        per point the iteration it first turned adversarial (−1: clean
                             image already misclassified), or null
    seconds, members         wall time; an ensemble's points broken by each member, or null
    checksum         SHA-256 of everything above, so a flipped bit is found

:func:`problem` names what is wrong with a file (None when it may be used); a file
with a problem is recomputed, never merged.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import read_json_limited

BATCH_FORMAT = "robustode-batch-2"
BATCH_FILE_BYTES = 64 << 20


def checksum(data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def seal(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its format and checksum."""
    out = {"format": BATCH_FORMAT, **{k: v for k, v in data.items() if k != "checksum"}}
    out["checksum"] = checksum(out)
    return out


def read(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the file's content, None) or (None, why it cannot be read)."""
    try:
        return read_json_limited(path, BATCH_FILE_BYTES, what="batch file"), None
    except InputError as exc:
        return None, str(exc)


def _bits(value: Any, count: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(type(v) is int and v in (0, 1) for v in value)
    )


def _ints(value: Any, count: int, minimum: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(type(v) is int and v >= minimum for v in value)
    )


def problem(
    data: Any, *, fingerprint: str, attack: str, batch: int, start: int, count: int
) -> str | None:
    """Why the batch file content ``data`` cannot stand for (attack, batch) of this
    evaluation, or None when it can."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not a batch record"
    if data.get("format") != BATCH_FORMAT:
        return f"it is not a {BATCH_FORMAT} record (format {data.get('format')!r})"
    if data.get("checksum") != checksum(data):
        return "its checksum does not match its content (the file was changed or damaged)"
    if data.get("fingerprint") != fingerprint:
        return (
            "it was computed for another model, data, attack setting or version "
            "(its fingerprint is not this evaluation's)"
        )
    where = (data.get("attack"), data.get("batch"), data.get("start"), data.get("count"))
    if where != (attack, batch, start, count):
        return (
            f"it holds {where}, not (attack, batch, start, count) = {(attack, batch, start, count)}"
        )
    for key in ("success", "clean_correct"):
        if not _bits(data.get(key), count):
            return f"'{key}' must be {count} values of 0 or 1"
    if not _ints(data.get("queries"), count, 0):
        return f"'queries' must be {count} integers ≥ 0"
    first = data.get("first_adversarial")
    if first is not None and not _ints(first, count, -1):
        return f"'first_adversarial' must be null or {count} integers ≥ -1"
    seconds = data.get("seconds")
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
        return "'seconds' must be a number ≥ 0"
    members = data.get("members")
    if members is not None and not (
        isinstance(members, list)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("attack"), str)
            and type(m.get("broken")) is int
            and 0 <= m["broken"] <= count
            for m in members
        )
    ):
        return "'members' must be null or a list of {attack, broken} with 0 ≤ broken ≤ count"
    # a point misclassified on its clean image is broken whatever the attack did
    if any(c == 0 and s == 0 for c, s in zip(data["clean_correct"], data["success"], strict=True)):
        return "it counts a point robust whose clean image is misclassified (robust > clean)"
    return None


__all__ = ["BATCH_FORMAT", "checksum", "problem", "read", "seal"]
