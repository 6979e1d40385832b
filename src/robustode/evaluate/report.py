"""``report.json`` (schema below) and ``report.md``, and the results table printed by the CLI.

report.json, ``schema_version`` 2::

    schema_version    2
    robustode_version, torch_version, date (UTC, ISO 8601)
    fingerprint                                    digest of eval_config.json: everything the
                                                   numbers depend on
    model: {class, model_config, solvers, weights_sha256, structure_sha256}
                                                   what was evaluated, read from the model
    model_config, weights_sha256                   the same two, at the top level
    source, checkpoint, data                       where model and images came from (the
                                                   caller's meta: path, {epoch, file}, dataset)
    n, batch_size, seed, inputs_sha256             the first n test images, in order
    clean_accuracy                                 fraction in [0, 1]
    attacks: [ {id, name, options, description, norm, eps, points, robust_points,
                robust_accuracy, model_calls, seconds, notes, members} ]
        model_calls: the attack's own model calls summed over points; seconds: wall time
        summed over its batches; members: an ensemble's points broken by each member
    worst_case: [ {norm, eps, eps_values, attacks, points, robust_points, robust_accuracy} ]
        per threat model (norm, ε): a point is robust iff every attack with that threat
        left it robust (the per-point AND). Radii within 2 % of each other
        (robustode.options.EPS_REL_TOL) are one threat model — SONet's 0.031 and 8/255 =
        0.03137 (1.2 % apart) — so the paper suite's worst case includes SPSA; ``eps`` is
        the group's smallest radius, ``eps_values`` every radius in it
    curves: {steps: {attack, norm, eps, max_steps, points: [{steps, robust_accuracy}]} | null,
             eps: {steps, norm, points: [{eps, eps_255, attack, robust_accuracy}]} | null}
    timings: {seconds (this process's wall time), attack_seconds (sum over all runs)}
    notes: [text]

Timing fields (``seconds``, ``timings``, ``date``) differ between runs; everything else is
a function of the weights, the images and the settings.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import torch

from .. import __version__
from ..attacks import Attack
from ..attacks.threat import SYMBOLS
from ..fingerprint import digest
from ..options import EPS_REL_TOL, format_eps, same_eps
from ..outputs import OutputFolder
from .suites import AttackSpec

SCHEMA_VERSION = 2
TIMING_FIELDS = ("seconds", "timings", "date")


def _threat_text(norm: str, eps: float, eps_values: Sequence[float] = ()) -> str:
    """``L∞ ε=8/255``; a group of radii within the tolerance: ``L∞ ε=0.031…8/255``."""
    values = sorted(set(eps_values)) or [eps]
    text = "…".join(format_eps(e, norm) for e in (values[0], values[-1])[: min(len(values), 2)])
    return f"{SYMBOLS.get(norm, norm)} ε={text}"


def group_threats(threats: Sequence[tuple[str, float]], rel: float = EPS_REL_TOL) -> list[int]:
    """A group index per (norm, ε): the same norm and radii within ``rel`` of every radius
    already in the group (:func:`robustode.options.same_eps`) share one; first-seen order."""
    groups: list[tuple[str, list[float]]] = []
    index: list[int] = []
    for norm, eps in threats:
        for k, (g_norm, members) in enumerate(groups):
            if g_norm == norm and all(same_eps(eps, m, rel) for m in members):
                members.append(eps)
                index.append(k)
                break
        else:
            groups.append((norm, [eps]))
            index.append(len(groups) - 1)
    return index


def build_report(
    *,
    specs: Sequence[AttackSpec],
    attacks: dict[str, Attack],
    points: dict[str, Any],
    curves: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any],
    seconds: float,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The report of an evaluation (see the module docstring for the schema); ``config`` is
    the evaluation's fingerprint (``eval_config.json``), ``meta`` where things came from."""
    first = points[specs[0].id]
    n = int(first.success.numel())
    rows: list[dict[str, Any]] = []
    notes = list(notes)
    for spec in specs:
        attack, pr = attacks[spec.id], points[spec.id]
        robust = int(pr.robust.sum())
        attack_notes = list(getattr(attack, "notes", []))
        for note in attack_notes:
            if note not in notes:
                notes.append(note)
        rows.append(
            {
                "id": spec.id,
                "name": spec.name,
                "options": dict(spec.options),
                "description": attack.describe(),
                "norm": attack.threat.norm,
                "eps": attack.threat.eps,
                "points": n,
                "robust_points": robust,
                "robust_accuracy": robust / n,
                "model_calls": int(pr.queries.sum()),
                "seconds": pr.seconds,
                "notes": attack_notes,
                "members": pr.members,
            }
        )
    groups: dict[int, list[dict[str, Any]]] = {}
    for k, row in zip(group_threats([(r["norm"], r["eps"]) for r in rows]), rows, strict=True):
        groups.setdefault(k, []).append(row)
    worst = []
    for members in groups.values():
        ids = [r["id"] for r in members]
        eps_values = sorted({float(r["eps"]) for r in members})
        robust = torch.stack([points[i].robust for i in ids]).all(0)
        worst.append(
            {
                "norm": members[0]["norm"],
                "eps": eps_values[0],
                "eps_values": eps_values,
                "attacks": ids,
                "points": n,
                "robust_points": int(robust.sum()),
                "robust_accuracy": int(robust.sum()) / n,
            }
        )
    clean = first.clean_correct
    model = config["model"]
    return {
        "schema_version": SCHEMA_VERSION,
        "robustode_version": __version__,
        "torch_version": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": digest(config),
        "model": {
            k: model[k]
            for k in ("class", "model_config", "solvers", "weights_sha256", "structure_sha256")
        },
        "model_config": model["model_config"],
        "weights_sha256": model["weights_sha256"],
        "source": meta.get("source"),
        "checkpoint": meta.get("checkpoint"),
        "data": meta.get("data"),
        "n": n,
        "batch_size": config["batch_size"],
        "seed": config["seed"],
        "inputs_sha256": config["data"]["sha256"],
        "clean_accuracy": int(clean.sum()) / n,
        "attacks": rows,
        "worst_case": worst,
        "curves": curves,
        "timings": {
            "seconds": seconds,
            "attack_seconds": float(sum(p.seconds for p in points.values())),
        },
        "notes": notes,
    }


def strip_timings(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its timing fields: equal for equal weights, images and settings."""
    out = {k: v for k, v in report.items() if k not in TIMING_FIELDS}
    out["attacks"] = [{k: v for k, v in r.items() if k != "seconds"} for r in report["attacks"]]
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def results_table(report: dict[str, Any]) -> str:
    """The attacks and the worst case per threat model as a plain Markdown table."""
    lines = [
        f"clean accuracy: {_pct(report['clean_accuracy'])} % on {report['n']} images",
        "",
        "| attack | threat model | robust accuracy (%) | points | model calls | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in report["attacks"]:
        lines.append(
            f"| {row['id']} | {_threat_text(row['norm'], row['eps'])} | "
            f"{_pct(row['robust_accuracy'])} | {row['points']} | {row['model_calls']:,} | "
            f"{row['seconds']:.1f} |"
        )
    for row in report["worst_case"]:
        if len(row["attacks"]) > 1:
            lines.append(
                f"| **worst case** ({len(row['attacks'])} attacks) | "
                f"{_threat_text(row['norm'], row['eps'], row.get('eps_values', ()))} | "
                f"**{_pct(row['robust_accuracy'])}** | "
                f"{row['points']} | | |"
            )
    return "\n".join(lines)


def curves_markdown(report: dict[str, Any]) -> str:
    """The curves as Markdown tables (empty when there are none)."""
    parts: list[str] = []
    steps = report["curves"].get("steps")
    if steps:
        parts += [
            f"### Robust accuracy vs PGD iterations ({_threat_text(steps['norm'], steps['eps'])}, "
            f"from one run of {steps['attack']})",
            "",
            "| PGD steps | robust accuracy (%) |",
            "|---:|---:|",
        ]
        parts += [f"| {p['steps']} | {_pct(p['robust_accuracy'])} |" for p in steps["points"]]
        parts.append("")
    eps = report["curves"].get("eps")
    if eps:
        parts += [
            f"### Robust accuracy vs ε (PGD-{eps['steps']} L∞, no random start, step 2.5·ε/20)",
            "",
            "| ε | ε·255 | robust accuracy (%) |",
            "|---:|---:|---:|",
        ]
        parts += [
            f"| {p['eps']:.4g} | {p['eps_255']:.3g} | {_pct(p['robust_accuracy'])} |"
            for p in eps["points"]
        ]
        parts.append("")
    return "\n".join(parts)


def report_markdown(report: dict[str, Any]) -> str:
    """``report.md``: what was evaluated, the results table, the curves and the notes."""
    data = report.get("data") or {}
    data_text = data.get("name") if isinstance(data, dict) else data
    checkpoint = report.get("checkpoint") or {}
    solvers = (report.get("model") or {}).get("solvers") or {}
    lines = [
        "# Robustness evaluation",
        "",
        f"- model: `{report.get('model_config')}`",
        f"- source: `{report.get('source')}`"
        + (f", checkpoint epoch {checkpoint.get('epoch')}" if checkpoint.get("epoch") else "")
        + f" (weights sha256 `{str(report.get('weights_sha256'))[:16]}…`)",
    ]
    lines += [
        f"- ODE block `{name}`: {s.get('method')} (rtol {s.get('rtol')}, atol "
        f"{s.get('atol')}, step size {s.get('step_size')}, step control {s.get('step_control')})"
        for name, s in solvers.items()
        if isinstance(s, dict)
    ]
    lines += [
        f"- data: {data_text}, the first {report['n']} test images in order",
        f"- batch size {report['batch_size']}, seed {report['seed']}; robustode "
        f"{report['robustode_version']}, torch {report['torch_version']}, {report['date']}",
        "",
        "## Results",
        "",
        results_table(report),
        "",
        "The worst case counts a point robust only if every attack with that threat model "
        "left it robust; radii within 2 % of each other (0.031 and 8/255) are one threat "
        "model.",
        "",
    ]
    curves = curves_markdown(report)
    if curves:
        lines += ["## Curves", "", curves]
    members = [r for r in report["attacks"] if r.get("members")]
    for row in members:
        lines += [f"**{row['id']}** points broken by each member: "]
        lines[-1] += ", ".join(f"{m['attack']} {m['broken']}" for m in row["members"])
        lines.append("")
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], folder: OutputFolder) -> None:
    """``report.json`` and ``report.md`` in the claimed ``folder``, both written atomically."""
    folder.write_json("report.json", report)
    folder.write_text("report.md", report_markdown(report))


__all__ = [
    "SCHEMA_VERSION",
    "build_report",
    "curves_markdown",
    "group_threats",
    "report_markdown",
    "results_table",
    "strip_timings",
    "write_report",
]
