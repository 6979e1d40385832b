"""Every benchmark in one run: ``robustode bench`` and ``python -m benchmarks.suite``.

Writes ``bench.md`` (the tables with date, machine, versions and the command, as
benchmarks/RESULTS.md holds them) and ``bench.json`` (every row, for plots) into
the output folder, after each section so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from robustode.io import write_bytes_atomic, write_json_atomic

from .section import Section, environment

SectionFn = Callable[[bool], Section]


def _sections() -> dict[str, SectionFn]:
    # imported here: each module pulls in its peer (torchdiffeq, torchattacks) on import
    from . import bench_attacks, bench_data, bench_gpu, bench_memory, bench_ode, bench_training

    return {
        "ode": lambda quick: bench_ode.section(quick),
        "memory": lambda quick: bench_memory.section(quick),
        "attacks": lambda quick: bench_attacks.section(quick),
        "training": lambda quick: bench_training.section(quick),
        "data": lambda quick: bench_data.section(quick),
        "gpu": lambda quick: bench_gpu.section(quick, "cuda"),
    }


NAMES = ("ode", "memory", "attacks", "training", "data", "gpu")


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
            "(the data pipeline reports a speed-up, higher is better)",
        ]
    )


def run_suite(
    names: Sequence[str], quick: bool, out: Path, command: str, log=print
) -> list[Section]:
    """Run the named sections in order; rewrite bench.md and bench.json after each."""
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    sections: list[Section] = []
    functions = _sections()
    for name in names:
        if name == "gpu" and not torch.cuda.is_available():
            log("[bench] gpu: skipped — no CUDA device, so no GPU figure was taken")
            continue
        log(f"[bench] {name} …")
        start = time.perf_counter()
        section = functions[name](quick)
        seconds = time.perf_counter() - start
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
    from robustode.cli import BENCH_SECTIONS, bench_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    bench_arguments(p)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not names or any(n not in BENCH_SECTIONS for n in names):
        p.error(f"--only takes names from {', '.join(BENCH_SECTIONS)}")
    return run_from_args(names, args, "python -m benchmarks.suite")


def run_from_args(names: list[str], args: argparse.Namespace, program: str) -> int:
    """Run ``names`` with the parsed options of :func:`robustode.cli.bench_arguments`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(
        [program]
        + (["--quick"] if args.quick else [])
        + ([f"--only {','.join(names)}"] if tuple(names) != NAMES else [])
        + ([f"--threads {args.threads}"] if args.threads else [])
    )
    start = time.perf_counter()
    run_suite(names, args.quick, args.out, command)
    print(f"wrote {args.out / 'bench.md'} and bench.json ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
