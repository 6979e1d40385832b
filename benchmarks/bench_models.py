"""Parameter count and forward time of every registered model (closing-note figures).

    python -m benchmarks.bench_models [--batch 128] [--repeats 3] [--json out.json]

Default options, eval mode, no gradient, random 32×32×3 inputs in [0, 1];
median of ``--repeats`` forward passes after one warm-up. These are absolute
times on the machine that runs them (not a target; nothing is compared).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from robustode.io import write_json_atomic
from robustode.models import create_model, list_models


def time_forward(name: str, batch: int, repeats: int) -> dict:
    model = create_model(name, seed=0).eval()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_s": statistics.median(times),
        "nfe": model.nfe,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list_models())
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print(
        f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print("| model | parameters | forward (s) | NFE (all ODE blocks) |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        row = time_forward(name, args.batch, args.repeats)
        rows.append(row)
        print(
            f"| {name} | {row['parameters']:,} | {row['forward_s']:.2f} | {row['nfe']} |",
            flush=True,
        )
    if args.json:
        result = {"batch": args.batch, "torch": torch.__version__, "rows": rows}
        write_json_atomic(result, args.json)


if __name__ == "__main__":
    main()
