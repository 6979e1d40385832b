"""Run the gradient-masking audit over the masking zoo (issue 20, item 5).

    python -m benchmarks.audit_zoo [--seeds 0,1,2] [--threads 1,2] [--only NAME,...]
                                   [--out DIR] [--proofs]

For every construction of :mod:`benchmarks.masking_zoo`, training seed and torch thread
count: train the network (cached under ``OUT/nets``), audit it at level quick on the first
100 test digits (audit seed 0) and append one JSON line to ``OUT/runs.jsonl``
(construction, truth, seed, threads, verdict, failed checks with their messages, seconds).
Runs already in the file are skipped, so an interrupted run resumes. ``--proofs`` also
establishes each construction's ground truth per seed with :func:`~benchmarks.masking_zoo.
prove` (attacks independent of the audit; one thread) into ``OUT/proofs.jsonl``.

Prints the confusion matrix (rows: truth; columns: the audit's verdicts) and a
per-construction table: its verdicts over all runs, "stable" when they agree everywhere.
Run it with ``OMP_NUM_THREADS=1`` in the environment; the thread count is set in-process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch

from .masking_zoo import ZOO, Construction, construction, digits_test, fmt_proof, prove

VERDICTS = ("masked", "suspicious", "no masking detected")
N_POINTS = 100


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def audit_run(c: Construction, seed: int, threads: int, cache: Path) -> dict[str, Any]:
    """One audit of ``c`` trained with ``seed``, with ``threads`` torch threads."""
    from robustode.evaluate.audit import audit

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = c.model(seed, cache)
        x, y = digits_test(N_POINTS)
        start = time.perf_counter()
        report = audit(model, x, y, eps=c.eps, level="quick", seed=0)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    failed = [ch for ch in report.checks if ch.failed]
    return {
        "construction": c.name,
        "truth": c.truth,
        "seed": seed,
        "threads": threads,
        "eps": c.eps,
        "verdict": report.verdict,
        "failed": [ch.name for ch in failed],
        "masked_by": [ch.name for ch in failed if ch.severity == "masked"],
        "messages": {ch.name: ch.message for ch in failed},
        "clean_accuracy": report.clean_accuracy,
        "seconds": round(seconds, 2),
    }


def proof_run(c: Construction, seed: int, cache: Path) -> dict[str, Any]:
    """The ground truth of ``c`` trained with ``seed`` (one thread)."""
    from .masking_zoo import load_or_train

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = load_or_train(c.base, seed, cache)
        model = c.build(base).eval()
        x, y = digits_test(N_POINTS)
        start = time.perf_counter()
        result = prove(c, model, base, x, y)
        result["seconds"] = round(time.perf_counter() - start, 2)
    finally:
        torch.set_num_threads(previous)
    result["seed"] = seed
    return result


def confusion(runs: list[dict[str, Any]]) -> dict[str, Counter]:
    table: dict[str, Counter] = {"masked": Counter(), "honest": Counter()}
    for r in runs:
        table[r["truth"]][r["verdict"]] += 1
    return table


def confusion_markdown(runs: list[dict[str, Any]]) -> str:
    table = confusion(runs)
    lines = [
        "| truth \\ verdict | " + " | ".join(VERDICTS) + " |",
        "|---|" + "---:|" * len(VERDICTS),
    ]
    for truth in ("masked", "honest"):
        lines.append(f"| {truth} | " + " | ".join(str(table[truth][v]) for v in VERDICTS) + " |")
    return "\n".join(lines)


def _ok(truth: str, verdict: str) -> bool:
    return verdict != "no masking detected" if truth == "masked" else verdict != "masked"


def per_construction_markdown(
    runs: list[dict[str, Any]], proofs: list[dict[str, Any]] | None = None
) -> str:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by[r["construction"]].append(r)
    proof_by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in proofs or []:
        proof_by[p["construction"]].append(p)
    lines = [
        "| construction | truth | ε | proof (ground truth) | PGD → strongest proof attack | "
        "verdicts (runs) | deciding checks | target met | stable |",
        "|---|---|---:|---|---|---|---|---|---|",
    ]
    for c in ZOO:
        rs = by.get(c.name)
        if not rs:
            continue
        verdicts = Counter(r["verdict"] for r in rs)
        words = ", ".join(f"{v} ×{n}" for v, n in verdicts.items())
        deciding = Counter(name for r in rs for name in (r["masked_by"] or r["failed"]))
        checks = ", ".join(f"{k} ×{n}" for k, n in deciding.most_common()) or "—"
        ps = proof_by.get(c.name, [])
        shown = (
            "; ".join(
                f"s{p['seed']}: {p['pgd']:.0%} → {p['strongest']:.0%}"
                + ("" if p["holds"] else " (does not hold)")
                for p in sorted(ps, key=lambda p: p["seed"])
            )
            or "—"
        )
        met = all(_ok(c.truth, r["verdict"]) for r in rs)
        lines.append(
            f"| {c.name} | {c.truth} | {c.eps:g} | {c.proof} | {shown} | {words} | {checks} | "
            f"{'yes' if met else 'NO'} | {'stable' if len(verdicts) == 1 else 'UNSTABLE'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.audit_zoo", description=__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--only", default="", help="comma-separated construction names")
    parser.add_argument("--out", default="runs/audit_zoo")
    parser.add_argument("--proofs", action="store_true", help="also run the ground-truth attacks")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        threads = [int(t) for t in args.threads.split(",") if t]
        chosen = [construction(n) for n in args.only.split(",") if n] or list(ZOO)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "nets"
    runs_path, proofs_path = out / "runs.jsonl", out / "proofs.jsonl"
    start = time.perf_counter()
    done = {(r["construction"], r["seed"], r["threads"]) for r in _read(runs_path)}
    for c in chosen:
        for seed in seeds:
            for t in threads:
                if (c.name, seed, t) in done:
                    continue
                record = audit_run(c, seed, t, cache)
                _append(runs_path, record)
                print(
                    f"{c.name} seed {seed} threads {t}: {record['verdict']} "
                    f"(failed: {', '.join(record['failed']) or 'none'}) {record['seconds']:.0f}s",
                    flush=True,
                )
    if args.proofs:
        proved = {(p["construction"], p["seed"]) for p in _read(proofs_path)}
        for c in chosen:
            for seed in seeds:
                if (c.name, seed) in proved:
                    continue
                result = proof_run(c, seed, cache)
                _append(proofs_path, result)
                print(f"proof seed {seed}: {fmt_proof(result)}", flush=True)
    names = {c.name for c in chosen}
    runs = [
        r
        for r in _read(runs_path)
        if r["construction"] in names and r["seed"] in seeds and r["threads"] in threads
    ]
    proofs = [p for p in _read(proofs_path) if p["construction"] in names and p["seed"] in seeds]
    print(f"\nseeds {seeds}, threads {threads}, {len(runs)} runs, "
          f"{time.perf_counter() - start:.0f} s this invocation\n")  # fmt: skip
    print(confusion_markdown(runs) + "\n")
    print(per_construction_markdown(runs, proofs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
