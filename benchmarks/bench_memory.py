"""Peak memory of a SONet forward+backward: adjoint vs backprop-through-solver, ours vs
torchdiffeq (issue 7, item 2; target: our adjoint ≤ 0.5 of our backprop).

Each configuration runs in a fresh Python process, so one run's allocator state
cannot hide another's peak. On CPU the figure is the growth of the process's
peak resident set (``VmHWM``, reset just before the forward pass) over its
resident set at that moment — model, weights and input already allocated; on CUDA it is
``torch.cuda.max_memory_allocated`` over the same baseline.

    python -m benchmarks.bench_memory [--quick] [--width 32] [--batch 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from .section import Section

# (label, adjoint, backend)
CONFIGS = [
    ("ours, backprop", False, "native"),
    ("ours, adjoint", True, "native"),
    ("torchdiffeq, backprop", False, "torchdiffeq"),
    ("torchdiffeq, adjoint", True, "torchdiffeq"),
]


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_resident() -> None:
    """Start the peak-RSS count (VmHWM) afresh: Linux keeps it across ``exec``, so a process
    started by a large parent would otherwise report the parent's size as its own peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_resident_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise OSError("no VmHWM in /proc/self/status: peak memory needs Linux")


def measure_one(
    width: int, batch: int, adjoint: bool, backend: str, method: str, device: str
) -> dict:
    """One forward+backward of SONet in this process; its peak memory above the baseline."""
    from robustode.models import create_model
    from robustode.nn.ode_block import named_ode_blocks

    torch.manual_seed(0)
    model = create_model("sonet", width=width, method=method, adjoint=adjoint, backend=backend).to(
        device
    )
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_resident()
        base = _resident_bytes()
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    nfe_forward = sum(block.nfe for _, block in named_ode_blocks(model))
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _peak_resident_bytes()
    return {
        "peak_mb": (peak - base) / 2**20,
        "seconds": time.perf_counter() - start,
        "nfe_forward": nfe_forward,
        "grad_norm": float(
            torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
        ),
    }


def run(width: int, batch: int, method: str, device: str, threads: int) -> list[dict]:
    rows = []
    for label, adjoint, backend in CONFIGS:
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_memory",
            "--one",
            json.dumps([width, batch, adjoint, backend, method, device, threads]),
        ]
        # run from the checkout's root, wherever the caller stands: -m needs benchmarks/
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1]
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"memory benchmark, {label}: the measuring process failed: {last}")
        row = {"config": label, "adjoint": adjoint, "backend": backend}
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(
            f"{label:>22}: peak +{row['peak_mb']:8.1f} MiB  {row['seconds']:6.1f} s  "
            f"NFE {row['nfe_forward']}",
            flush=True,
        )
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """The issue's comparisons, as ours / reference peak-memory ratios."""
    peak = {r["config"]: r["peak_mb"] for r in rows}
    pairs = [
        ("our adjoint / our backprop", "ours, adjoint", "ours, backprop", 0.5),
        ("our adjoint / torchdiffeq adjoint", "ours, adjoint", "torchdiffeq, adjoint", None),
        ("our backprop / torchdiffeq backprop", "ours, backprop", "torchdiffeq, backprop", None),
        (
            "torchdiffeq adjoint / its backprop",
            "torchdiffeq, adjoint",
            "torchdiffeq, backprop",
            None,
        ),
    ]
    out = []
    for label, a, b, target in pairs:
        ratio = peak[a] / peak[b]
        out.append(
            {
                "pair": label,
                "ratio": ratio,
                "target": target,
                "met": None if target is None else ratio <= target,
            }
        )
    return out


def table(rows: list[dict], comparisons: list[dict]) -> str:
    lines = ["| configuration | peak above baseline (MiB) | forward+backward (s) | NFE (forward) |"]
    lines.append("|---|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['peak_mb']:.1f} | {r['seconds']:.1f} | {r['nfe_forward']} |"
        )
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    for c in comparisons:
        target = (
            "–" if c["target"] is None else f"≤ {c['target']} ({'met' if c['met'] else 'missed'})"
        )
        lines.append(f"| {c['pair']} | {c['ratio']:.2f} | {target} |")
    return "\n".join(lines)


def section(
    quick: bool = False,
    width: int = 32,
    batch: int = 64,
    method: str = "dopri5",
    device: str = "cpu",
    threads: int | None = None,
) -> Section:
    """Quick: width 8, batch 16; full: width 32, batch 64 (the issue's SONet)."""
    width, batch = (8, 16) if quick else (width, batch)
    rows = run(width, batch, method, device, threads or torch.get_num_threads())
    comparisons = ratios(rows)
    return Section(
        "memory",
        f"Peak memory — SONet width {width}, batch {batch}, {method} (tol 0.1), "
        f"forward+backward on {device}",
        "python -m benchmarks.bench_memory" + (" --quick" if quick else ""),
        table(rows, comparisons),
        {
            "width": width,
            "batch": batch,
            "method": method,
            "device": device,
            "rows": rows,
            "ratios": comparisons,
        },
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="width 8, batch 16")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--method", default="dopri5", help="ODE method of every block (tol 0.1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = p.parse_args()
    if args.one is not None:
        width, batch, adjoint, backend, method, device, threads = json.loads(args.one)
        if threads:
            torch.set_num_threads(threads)
        print(json.dumps(measure_one(width, batch, adjoint, backend, method, device)))
        return
    result = section(args.quick, args.width, args.batch, args.method, args.device, args.threads)
    result.report(args.json)


if __name__ == "__main__":
    main()
