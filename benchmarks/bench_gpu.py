"""Training throughput on a GPU: bf16 autocast + channels_last + ``torch.compile`` on vs off,
and the model FLOP utilisation it implies (issue 7, item 6).

    python -m benchmarks.bench_gpu [--quick] [--device cuda] [--json out.json]

Natural training steps (SGD) of ``soblock`` and ``resnet10`` at width 64 on
CIFAR-shaped synthetic batches that live on the device. Both settings are timed
interleaved (plain, fast, plain, fast …; median of the repeats after the warm-up,
which also pays for compilation). FLOPs per step are counted by
``torch.utils.flop_counter.FlopCounterMode`` on one eager step (for the ODE model
they follow its NFE); MFU = FLOPs per second / the device's dense bf16 peak.

Without CUDA, ``robustode bench`` skips this section and says no GPU figure was
taken; ``--device cpu`` runs the same code with compile off, to check it.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from robustode.models import create_model

from .section import Section
from .timing import interleaved_medians

# dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
MODELS = {"soblock": {"width": 64}, "resnet10": {"width": 64}}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    # longest names first: "L4" must not claim an L40S
    return next((PEAK_BF16[k] for k in sorted(PEAK_BF16, key=len, reverse=True) if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model_name: str, options: dict, batch: int, device: torch.device, fast: bool):
    """A closure running ``steps`` training steps; fast = bf16 + channels_last + compile."""
    torch.manual_seed(0)
    model = create_model(model_name, **options).to(device).train()
    # CPU check runs leave channels_last out: with bf16 autocast, the soblock backward
    # segfaults in torch 2.13's CPU kernels (robustode's trainer refuses AMP on CPU)
    channels_last = fast and device.type == "cuda"
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=memory)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if fast and device.type == "cuda" else model

    def autocast():
        if fast:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    def steps(n: int) -> None:
        for _ in range(n):
            one()
        _sync(device)

    return model, x, y, one, steps


def step_flops(model_name: str, options: dict, batch: int, device: torch.device) -> int:
    """FLOPs of one eager fp32 training step (forward + backward)."""
    model, x, y, _, _ = make_step(model_name, options, batch, device, fast=False)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return int(counter.get_total_flops())


def run(device: torch.device, batch: int, steps: int, repeats: int, models=MODELS) -> list[dict]:
    rows = []
    peak = peak_flops(device)
    for name, options in models.items():
        flops = step_flops(name, options, batch, device)
        *_, plain = make_step(name, options, batch, device, fast=False)
        *_, fast = make_step(name, options, batch, device, fast=True)
        t_plain, t_fast = interleaved_medians(
            lambda plain=plain: plain(steps), lambda fast=fast: fast(steps), repeats=repeats
        )
        row = {"model": name, **options, "batch": batch, "flops_per_step": flops}
        for label, seconds in (("plain", t_plain), ("fast", t_fast)):
            per_step = seconds / steps
            row[f"{label}_images_per_s"] = batch / per_step
            row[f"{label}_mfu"] = None if peak is None else flops / per_step / peak
        row["speedup"] = t_plain / t_fast
        rows.append(row)
        print(
            f"{name}: {row['plain_images_per_s']:.0f} → {row['fast_images_per_s']:.0f} images/s "
            f"({row['speedup']:.2f}×)",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    def mfu(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    lines = [
        "| model | batch | GFLOP/step | images/s (fp32, eager) | images/s (bf16, channels_last, "
        "compile) | speed-up | MFU off | MFU on |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} w{r['width']} | {r['batch']} | {r['flops_per_step'] / 1e9:.1f} | "
            f"{r['plain_images_per_s']:,.0f} | {r['fast_images_per_s']:,.0f} | "
            f"{r['speedup']:.2f}× | {mfu(r['plain_mfu'])} | {mfu(r['fast_mfu'])} |"
        )
    return "\n".join(lines)


def section(quick: bool = False, device: str = "cuda") -> Section:
    """Quick: width 16, batch 64, 5 steps × 3 repeats; full: width 64, batch 128, 20 × 5."""
    dev = torch.device(device)
    if quick:
        models = {k: {"width": 16} for k in MODELS}
        rows = run(dev, 64, 5, 3, models)
    else:
        rows = run(dev, 128, 20, 5)
    title = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return Section(
        "gpu",
        f"Training throughput on {title}: bf16 autocast + channels_last + torch.compile, off vs on",
        "python -m benchmarks.bench_gpu" + (" --quick" if quick else ""),
        table(rows),
        {"device": str(dev), "rows": rows},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="width 16, batch 64, few steps")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    result = section(args.quick, args.device)
    result.report(args.json)


if __name__ == "__main__":
    main()
