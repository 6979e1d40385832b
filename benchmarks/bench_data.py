"""Data pipeline: images per second of robustode's on-device augmentation against a torch
``DataLoader`` with per-image transforms on the same data (issue 7, item 5; target ≥ 5×).

Both produce an epoch of float32 [0, 1] batches with random crop (padding 4) and
horizontal flip, shuffled. The peer is the usual recipe: a ``Dataset`` whose
``__getitem__`` converts, pads, crops and flips one image (torchvision's
transforms are not installable here, so the same operations are written with
torch ops), batched by ``DataLoader`` with ``num_workers`` workers.

    python -m benchmarks.bench_data [--quick] [--workers 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from robustode.data import DeviceLoader, ImageDataset

from .timing import interleaved_medians


class PerImageAugment(Dataset):
    """The peer: uint8 CHW images augmented one at a time in ``__getitem__``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int = 4) -> None:
        self.images, self.labels, self.padding = images, labels, padding

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div(255)
        p = self.padding
        x = F.pad(x, (p, p, p, p))
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        h, w = self.images.shape[-2:]
        x = x[:, top : top + h, left : left + w]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


def synthetic_cifar(n: int) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, 10, "synthetic-cifar")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5000 images, 3 repeats")
    p.add_argument("--n", type=int, default=20000, help="images per epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the peer")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    n = 5000 if args.quick else args.n
    repeats = 3 if args.quick else args.repeats
    data = synthetic_cifar(n)
    ours = DeviceLoader(data, args.batch, shuffle=True, augment=True, seed=0)
    peer = DataLoader(
        PerImageAugment(data.images, data.labels),
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
    )

    def epoch_ours() -> None:
        for x, _ in ours:
            x.sum()  # touch the batch as a training step would

    def epoch_peer() -> None:
        for x, _ in peer:
            x.sum()

    start = time.perf_counter()
    t_ours, t_peer = interleaved_medians(epoch_ours, epoch_peer, repeats=repeats)
    row = {
        "images": n,
        "batch": args.batch,
        "workers": args.workers,
        "ours_images_per_s": n / t_ours,
        "peer_images_per_s": n / t_peer,
        "speedup": t_peer / t_ours,
        "target": 5.0,
        "met": t_peer / t_ours >= 5.0,
        "seconds": time.perf_counter() - start,
    }
    print(
        f"| images/s ours | images/s DataLoader ({args.workers} workers) | speed-up | target |\n"
        f"|---:|---:|---:|---|\n"
        f"| {row['ours_images_per_s']:,.0f} | {row['peer_images_per_s']:,.0f} | "
        f"{row['speedup']:.1f}× | ≥ 5× ({'met' if row['met'] else 'missed'}) |"
    )
    if args.json:
        meta = {
            "benchmark": "data-pipeline",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "rows": [row],
        }
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
