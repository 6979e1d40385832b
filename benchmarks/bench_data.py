"""Data pipeline: images per second of robustode's on-device augmentation against a torch
``DataLoader`` with per-image transforms on the same data (issue 7, item 5; target ≥ 5×).

Both produce an epoch of float32 [0, 1] batches with random crop (padding 4) and
horizontal flip, shuffled. The peer is the usual recipe: a ``Dataset`` whose
``__getitem__`` converts, pads, crops and flips one image (torchvision's
transforms are not installable here, so the same operations are written with
torch ops), batched by ``DataLoader`` with ``num_workers`` workers.

    python -m benchmarks.bench_data [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from robustode.data import DeviceLoader, ImageDataset

from .section import Section
from .timing import interleaved_medians

TARGET = 5.0  # issue 7: at least 5× the per-image DataLoader


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


def measure(n: int, batch: int, workers: int, repeats: int) -> dict:
    """Images per second of one epoch, ours and the per-image ``DataLoader`` (interleaved)."""
    data = synthetic_cifar(n)
    ours = DeviceLoader(data, batch, shuffle=True, augment=True, seed=0)
    peer = DataLoader(
        PerImageAugment(data.images, data.labels),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
    )

    def epoch_ours() -> None:
        for x, _ in ours:
            x.sum()  # touch the batch as a training step would

    def epoch_peer() -> None:
        for x, _ in peer:
            x.sum()

    t_ours, t_peer = interleaved_medians(epoch_ours, epoch_peer, repeats=repeats)
    return {
        "images": n,
        "batch": batch,
        "workers": workers,
        "ours_images_per_s": n / t_ours,
        "peer_images_per_s": n / t_peer,
        "speedup": t_peer / t_ours,
        "target": TARGET,
        "met": t_peer / t_ours >= TARGET,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| workers (peer) | images/s ours | images/s DataLoader | speed-up | target |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['ours_images_per_s']:,.0f} | {r['peer_images_per_s']:,.0f} | "
            f"{r['speedup']:.1f}× | ≥ {TARGET:g}× ({'met' if r['met'] else 'missed'}) |"
        )
    return "\n".join(lines)


def section(quick: bool = False, n: int = 20000, batch: int = 128, repeats: int = 5) -> Section:
    """Quick: 5000 images, 3 repeats, the peer with 0 workers; full: 0 and 2 workers."""
    n, repeats = (5000, 3) if quick else (n, repeats)
    rows = [measure(n, batch, w, repeats) for w in ((0,) if quick else (0, 2))]
    return Section(
        "data",
        f"Data pipeline — on-device crop+flip vs a per-image DataLoader ({n} images, "
        f"batch {batch})",
        "python -m benchmarks.bench_data" + (" --quick" if quick else ""),
        table(rows),
        {"rows": rows},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5000 images, 3 repeats, 0 workers")
    p.add_argument("--n", type=int, default=20000, help="images per epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    result = section(args.quick, args.n, args.batch, args.repeats)
    result.report(args.json)


if __name__ == "__main__":
    main()
