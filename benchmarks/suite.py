"""Every benchmark in one run: ``robustode bench`` and ``python -m benchmarks.suite``.

Writes ``bench.md`` (the tables with date, machine, versions and the command, as
benchmarks/RESULTS.md holds them) and ``bench.json`` (every row, for plots) into
the output folder, after each section so an interrupted run keeps what it measured.

Each table is printed once, when its section ends; what a section prints while it
measures goes to stderr as progress lines (``[bench] ode · …``). ``--quick`` runs
too few repeats on too little work for a ratio to mean anything: its tables say
``quick: not a measurement`` where the full run says whether a target was met,
and bench.json's ``met`` fields are null.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import io
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from robustode.cli.bench import BENCH_SECTIONS
from robustode.io import write_bytes_atomic, write_json_atomic

from .section import Section, environment

SectionFn = Callable[[bool], Section]


def _section_function(name: str, data_dir: Path | None = None) -> SectionFn:
    """The ``section`` of benchmark ``name``, imported only when it runs: each module pulls
    in its peer (torchdiffeq, torchattacks) on import."""
    module = importlib.import_module(f"benchmarks.bench_{name}")
    if name == "gpu":
        return lambda quick: module.section(quick, "cuda")
    if name == "attacks" and data_dir is not None:
        return lambda quick: module.section(quick, data_dir)
    return module.section


NAMES = BENCH_SECTIONS
QUICK_VERDICT = "quick: not a measurement"
_VERDICT = re.compile(r"\b(?:met|missed|MISSED)\b")


def quick_table(table: str) -> str:
    """``table`` with every target verdict (met / missed) replaced by :data:`QUICK_VERDICT`:
    a quick run's ratios are noise, and a verdict on them reads as a result."""
    return "\n".join(
        _VERDICT.sub(QUICK_VERDICT, line) if line.startswith("|") else line
        for line in table.splitlines()
    )


def _quick_rows(value):
    """bench.json's rows of a quick run: every ``met`` verdict set to None."""
    if isinstance(value, dict):
        return {k: (None if k == "met" else _quick_rows(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_quick_rows(v) for v in value]
    return value


class _Progress(io.TextIOBase):
    """A section's own prints, line by line, as ``[bench] NAME · line`` on ``stream``."""

    def __init__(self, name: str, stream) -> None:
        self.name, self.stream, self.pending = name, stream, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                print(f"[bench] {self.name} · {line}", file=self.stream, flush=True)
        return len(text)

    def flush(self) -> None:
        if self.pending.strip():
            print(f"[bench] {self.name} · {self.pending}", file=self.stream, flush=True)
        self.pending = ""


def heading(env: dict, command: str, quick: bool) -> str:
    gpu = (
        f"GPU: {env['cuda']}"
        if env["cuda"]
        else "GPU: none — no GPU figure was taken (every row is CPU)"
    )
    return "\n".join(
        [
            f"# robustode benchmarks{' (quick)' if quick else ''}",
            "",
            f"- date: {dt.date.today().isoformat()}",
            f"- machine: {env['processor']}, {env['cpus']} CPUs usable, torch threads "
            f"{env['threads']}; {gpu}",
            f"- versions: Python {env['python']}, torch {env['torch']}, torchdiffeq "
            f"{env['torchdiffeq']}, torchattacks {env['torchattacks']}",
            f"- command: `{command}`",
            "- every time figure is a ratio ours / peer measured in the same run, interleaved "
            "(A B A B …), median of the repeats after one warm-up round; lower is better "
            "(the data pipeline and the GPU section report a speed-up: higher is better)",
        ]
    )


def run_suite(
    names: Sequence[str],
    quick: bool,
    out: Path,
    command: str,
    log=print,
    data_dir: Path | None = None,
    progress=None,
) -> list[Section]:
    """Run the named sections in order; rewrite bench.md and bench.json after each.

    ``log`` gets each table once; what a section prints while it runs goes to ``progress``
    (default stderr) as ``[bench] NAME · …`` lines. ``quick``: verdicts become
    :data:`QUICK_VERDICT`."""
    progress = progress or sys.stderr
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    sections: list[Section] = []
    for name in names:
        if name == "gpu" and not torch.cuda.is_available():
            log("[bench] gpu: skipped — no CUDA device, so no GPU figure was taken")
            continue
        log(f"[bench] {name} …")
        start = time.perf_counter()
        stream = _Progress(name, progress)
        with contextlib.redirect_stdout(stream):
            section = _section_function(name, data_dir)(quick)
        stream.flush()
        seconds = time.perf_counter() - start
        if quick:
            section.table = quick_table(section.table)
            section.data = _quick_rows(section.data)
            section.data["verdict"] = QUICK_VERDICT
        section.data["seconds"] = seconds
        sections.append(section)
        log(f"\n## {section.title}\n\n{section.table}\n\n[bench] {name}: {seconds:.0f} s\n")
        body = [heading(env, command, quick)]
        for s in sections:
            body += [f"\n## {s.title}\n", f"`{s.command}` ({s.data['seconds']:.0f} s)\n", s.table]
        write_bytes_atomic(("\n".join(body) + "\n").encode(), out / "bench.md")
        write_json_atomic(
            {
                "environment": env,
                "command": command,
                "quick": quick,
                "sections": [s.to_dict() for s in sections],
            },
            out / "bench.json",
        )
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    from robustode.cli.bench import bench_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    bench_arguments(p)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not names or any(n not in BENCH_SECTIONS for n in names):
        p.error(f"--only takes names from {', '.join(BENCH_SECTIONS)}")
    return run_from_args(names, args, "python -m benchmarks.suite")


def run_from_args(names: list[str], args: argparse.Namespace, program: str) -> int:
    """Run ``names`` with the parsed options of :func:`robustode.cli.bench.bench_arguments`."""
    names = list(dict.fromkeys(names))  # a name given twice runs once
    if "attacks" in names:  # before any section runs, not after an hour of them
        from .bench_attacks import DEFAULT_DATA, check_data

        args.data_dir = args.data_dir or DEFAULT_DATA
        check_data(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(
        [program]
        + (["--quick"] if args.quick else [])
        + ([f"--only {','.join(names)}"] if tuple(names) != NAMES else [])
        + ([f"--threads {args.threads}"] if args.threads else [])
    )
    start = time.perf_counter()
    run_suite(names, args.quick, args.out, command, data_dir=args.data_dir)
    print(f"wrote {args.out / 'bench.md'} and bench.json ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
