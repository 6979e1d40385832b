"""The table of the issue-5 training runs, read from their run folders.

    python -m benchmarks.training_table [RUNS_DIR] [--pgd20]

For each run folder under RUNS_DIR (default runs/issue5): epochs, final and
best clean test accuracy, wall time, and the ODE blocks' forward/backward NFE
per batch. With --pgd20, also the PGD-20 L∞ (ε 8/255, step 2/255, no random
start) robust accuracy of the final checkpoint on the first 500 test images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robustode.attacks import create_attack
from robustode.data import load_dataset
from robustode.train import load_model, read_metrics, read_run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=Path, default=Path("runs/issue5"))
    parser.add_argument("--pgd20", action="store_true", help="also attack each final model")
    args = parser.parse_args()
    header = "| run | epochs | test acc (%) | best (%) | wall (s) | NFE fwd/batch | NFE bwd/batch |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if args.pgd20:
        header += " PGD-20 (%) |"
        rule += "---:|"
    print(header)
    print(rule)
    for run in sorted(p for p in args.runs.iterdir() if (p / "metrics.jsonl").is_file()):
        rows = read_metrics(run)
        if not rows:
            continue
        last = rows[-1]
        line = (
            f"| {run.name} | {last['epoch']} | {100 * last['test_acc']:.1f} | "
            f"{100 * max(r['test_acc'] for r in rows):.1f} | "
            f"{sum(r['seconds'] for r in rows):.0f} | "
            f"{last['nfe_forward_per_batch']:.1f} | {last['nfe_backward_per_batch']:.1f} |"
        )
        if args.pgd20:
            config = read_run_config(run)
            test = load_dataset(config.data, split="test", root=config.data_dir).subset(500)
            model = load_model(run)
            x, y = test.float_images(), test.labels
            attack = create_attack("pgd20-linf", eps=8 / 255, step_size=2 / 255, batch_size=100)
            line += f" {100 * attack.run(model, x, y).robust_accuracy:.1f} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
