"""Our attacks vs torchattacks on 500 real CIFAR-10 test images: robust accuracy and time.

    python -m benchmarks.bench_attacks [--data DIR] [--images 500] [--json out.json]

Trains the small CNN of benchmarks/attack_peers.py naturally on the CIFAR-10
training subset (6 epochs, seed 0), then runs each matched pair once, ours
first. Prints a Markdown table; a time ratio below 1 means we are faster.
Robust accuracy of ours may be lower than the peer's (stronger), never more
than 2 points higher (tests/test_attack_peers.py asserts that).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from .attack_peers import (
    peer_pairs,
    read_cifar,
    robust_accuracy,
    small_cnn,
    train_small_model,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cifar-10-batches-py")
    parser.add_argument("--images", type=int, default=500, help="first N test images")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train = read_cifar(args.data, "train")
    x, y = read_cifar(args.data, "test", args.images)
    torch.manual_seed(0)
    model = train_small_model(small_cnn(), x_train, y_train, epochs=6)
    clean = robust_accuracy(model, x, y)
    print(
        f"small CNN, natural training; {len(x)} CIFAR-10 test images, clean accuracy "
        f"{100 * clean:.1f} %; torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}\n"
    )
    print("| attack | setting | ours (%) | peer (%) | ours (s) | peer (s) | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for pair in peer_pairs():
        start = time.perf_counter()
        ours = pair.ours().run(model, x, y).robust_accuracy
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        peer = robust_accuracy(model, pair.peer(model)(x, y), y)
        peer_s = time.perf_counter() - start
        rows.append(
            {
                "attack": pair.name,
                "setting": pair.settings,
                "ours": ours,
                "peer": peer,
                "ours_s": ours_s,
                "peer_s": peer_s,
            }
        )
        print(
            f"| {pair.name} | {pair.settings} | {100 * ours:.1f} | {100 * peer:.1f} | "
            f"{ours_s:.1f} | {peer_s:.1f} | {ours_s / peer_s:.2f} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"clean": clean, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
