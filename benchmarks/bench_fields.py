"""Vector-field speed: the fast fields against their reference implementation and
against their convolutions alone, and what it does to training (issue 21).

Three tables, every figure a ratio of times measured interleaved in one run
(A B C A B C …, median of ``--repeats`` after a warm-up round), of wall-clock
time and, in parentheses, of this process's CPU time (steadier when the machine
is shared: it leaves out the time spent waiting for a core):

- **per block shape** (width w, batch B, 32×32 images): one evaluation of the
  field, forward and backward (gradients to both states and every parameter), for
  the reference implementation (today's code, ``reference=True``) and the fast one,
  against the *convolution floor*: the field's two convolutions alone (two matrix
  products for the classifier), forward and backward, in whichever of NCHW and
  NHWC runs them faster. Target: fast ≤ 1.5 × floor.
- **training step** (loss, backward, SGD — what the trainer does per batch) of
  SOBlock (dopri5, tol 0.1) with fast and with reference fields, against ResNet10 at
  the same width and batch. Target: fast SOBlock ≤ 2.5 × ResNet10.
- **SONet forward + backward**, fast fields against reference fields. Target:
  ≥ 2× faster (ratio ≤ 0.5). At batch 64 by default (``--sonet-batch``):
  backpropagating through every solve holds 7.5 GB at batch 64 (benchmarks/
  RESULTS.md, peak memory), twice that at 128 — more than a shared 23 GB machine
  can spare; the work per image is the same.

Fast and reference share their weights and must take the same steps: equal NFE of
every ODE block is asserted, and the per-shape rows check that the two
implementations' outputs agree.

    python -m benchmarks.bench_fields [--quick] [--width 32] [--batch 128] [--sonet-batch 64]
                                      [--only fields|training|sonet] [--json out.json]
    python -m benchmarks.bench_fields --profile   # where the time goes, by operation kind
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustode.defenses import create_defense
from robustode.models import create_model
from robustode.nn import (
    NeuralODEField,
    SkewConvField,
    SkewConvODE,
    SkewLinearField,
    set_reference_fields,
)
from robustode.nn.layout import CHANNELS_LAST, CONTIGUOUS, in_layout

from .bench_training import training_step
from .section import Section
from .timing import interleaved_medians_n

FIELD_TARGET, SOBLOCK_TARGET, SONET_TARGET = 1.5, 2.5, 0.5


def shapes(width: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(label, kind, arguments) of every field the models use, at ``width``."""
    w = width
    return [
        (f"stem 3→{w}, 32×32", "conv", (3, w, 1, 32)),
        (f"stage {w}→{w}, 32×32", "conv", (w, w, 1, 32)),
        (f"down {w}→{2 * w}, 32→16", "conv", (w, 2 * w, 2, 32)),
        (f"stage {2 * w}, 16×16", "conv", (2 * w, 2 * w, 1, 16)),
        (f"down {2 * w}→{4 * w}, 16→8", "conv", (2 * w, 4 * w, 2, 16)),
        (f"stage {4 * w}, 8×8", "conv", (4 * w, 4 * w, 1, 8)),
        (f"down {4 * w}→{8 * w}, 8→4", "conv", (4 * w, 8 * w, 2, 8)),
        (f"stage {8 * w}, 4×4", "conv", (8 * w, 8 * w, 1, 4)),
        (f"classifier {8 * w}→10", "linear", (8 * w, 10)),
        (f"ODENet {w}, 32×32", "neural", (w, 32)),
    ]


def _evaluation(field, state, cotangents) -> Callable[[], None]:
    """One field evaluation with the gradients a training step needs (no accumulation)."""
    wrt = [*state, *field.parameters()]

    def run() -> None:
        out = field(torch.zeros(()), state)
        out = out if isinstance(out, tuple) else (out,)
        torch.autograd.grad(out, wrt, cotangents)

    return run


def _leaves(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(v.detach().requires_grad_() for v in tensors)


def _conv_floor(field: SkewConvField, x, z, layout) -> Callable[[], None]:
    """The skew field's two convolutions alone, forward and backward, in ``layout``."""
    xn, zn = _leaves(in_layout(field.norm_x_in(x), layout), in_layout(field.norm_z_in(z), layout))
    weight = field.weight.detach().clone().requires_grad_()
    extra = field._extra(x, z)
    kw = dict(stride=field.stride, padding=field.padding)
    with torch.no_grad():
        g_dz = torch.randn_like(F.conv2d(xn, weight, **kw))
        g_dx = torch.randn_like(xn)

    def run() -> None:
        dz = F.conv2d(xn, weight, **kw)
        dx = F.conv_transpose2d(zn, -weight, output_padding=extra, **kw)
        torch.autograd.grad((dz, dx), (xn, zn, weight), (g_dz, g_dx))

    return run


def _neural_floor(field: NeuralODEField, x, layout) -> Callable[[], None]:
    """The ODENet field's two 3×3 convolutions alone (C → C), forward and backward."""
    (h,) = _leaves(in_layout(x, layout))
    w1 = field.conv1.conv.weight[:, 1:].detach().clone().requires_grad_()
    w2 = field.conv2.conv.weight[:, 1:].detach().clone().requires_grad_()
    g = torch.randn_like(h)

    def run() -> None:
        out = F.conv2d(F.conv2d(h, w1, padding=1), w2, padding=1)
        torch.autograd.grad(out, (h, w1, w2), g)

    return run


def _linear_floor(field: SkewLinearField, x, z) -> Callable[[], None]:
    x, z = _leaves(x, z)
    weight = field.weight.detach().clone().requires_grad_()
    g_z, g_x = torch.randn_like(z), torch.randn_like(x)

    def run() -> None:
        torch.autograd.grad((x @ weight, z @ weight.T), (x, z, weight), (g_z, g_x))

    return run


def _cases(kind: str, args: tuple[int, ...], batch: int):
    """(reference evaluation, fast evaluation, floors, agreement) for one field shape."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if kind == "conv":
        c_in, c_out, stride, size = args
        block = SkewConvODE(c_in, c_out, stride)
        x = torch.randn(batch, c_in, size, size, generator=gen)
        fast_state = block.initial_state(x)
        ref_field = copy.deepcopy(block.field)
        ref_field.reference = True
        ref_state = tuple(v.contiguous() for v in fast_state)
        floors = [_conv_floor(block.field, *ref_state, lay) for lay in (CONTIGUOUS, CHANNELS_LAST)]
        field = block.field
    elif kind == "linear":
        features, classes = args
        field = SkewLinearField(features, classes)
        ref_field = copy.deepcopy(field)
        ref_field.reference = True
        fast_state = ref_state = (
            torch.randn(batch, features, generator=gen),
            torch.full((batch, classes), 0.1),
        )
        floors = [_linear_floor(field, *ref_state)]
    else:
        channels, size = args
        field = NeuralODEField(channels)
        ref_field = copy.deepcopy(field)
        ref_field.reference = True
        x = torch.randn(batch, channels, size, size, generator=gen)
        ref_state = (x,)
        fast_state = (in_layout(x, field.layout(x)),)
        floors = [_neural_floor(field, x, lay) for lay in (CONTIGUOUS, CHANNELS_LAST)]
    with torch.no_grad():
        t = torch.zeros(())
        ref_out = ref_field(t, ref_state if kind != "neural" else ref_state[0])
        fast_out = field(t, fast_state if kind != "neural" else fast_state[0])
    ref_out = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    fast_out = fast_out if isinstance(fast_out, tuple) else (fast_out,)
    agree = max(
        float((a - b).abs().max() / b.abs().max()) for a, b in zip(fast_out, ref_out, strict=True)
    )
    cot_ref = [torch.randn(v.shape, generator=gen) for v in ref_out]
    cot_fast = [in_layout(c, _layout_of(v)) for c, v in zip(cot_ref, fast_out, strict=True)]

    def wrap(f):
        return f if kind != "neural" else _Single(f)

    ref_run = _evaluation(wrap(ref_field), _leaves(*ref_state), cot_ref)
    fast_run = _evaluation(wrap(field), _leaves(*fast_state), cot_fast)
    return ref_run, fast_run, floors, agree


class _Single(torch.nn.Module):
    """A single-tensor field seen as a tuple field (for :func:`_evaluation`)."""

    def __init__(self, field) -> None:
        super().__init__()
        self.field = field

    def forward(self, t, state):
        return self.field(t, state[0])


def _layout_of(v: torch.Tensor) -> torch.memory_format:
    if v.dim() == 4 and not v.is_contiguous() and v.is_contiguous(memory_format=CHANNELS_LAST):
        return CHANNELS_LAST
    return CONTIGUOUS


def run_fields(width: int, batch: int, repeats: int) -> list[dict]:
    rows = []
    for label, kind, args in shapes(width):
        ref_run, fast_run, floors, agree = _cases(kind, args, batch)
        times = interleaved_medians_n([ref_run, fast_run, *floors], repeats=repeats)
        (t_ref, c_ref), (t_fast, c_fast) = times[:2]
        # the floor is the faster layout's, by CPU time (the steadier clock when shared)
        t_floor, c_floor = min(times[2:], key=lambda tc: tc[1])
        row = {
            "shape": label,
            "kind": kind,
            "batch": batch,
            "reference_ms": t_ref * 1e3,
            "fast_ms": t_fast * 1e3,
            "floor_ms": t_floor * 1e3,
            "reference_cpu_ms": c_ref * 1e3,
            "fast_cpu_ms": c_fast * 1e3,
            "floor_cpu_ms": c_floor * 1e3,
            "floor_layout": ("NCHW", "NHWC")[times[2:].index((t_floor, c_floor))],
            "fast_over_reference": t_fast / t_ref,
            "fast_over_floor": t_fast / t_floor,
            "reference_over_floor": t_ref / t_floor,
            "fast_over_reference_cpu": c_fast / c_ref,
            "fast_over_floor_cpu": c_fast / c_floor,
            "reference_over_floor_cpu": c_ref / c_floor,
            "max_rel_difference": agree,
            "target": FIELD_TARGET,
        }
        rows.append(row)
        print(
            f"{label:>26}: reference {t_ref * 1e3:7.1f} ms  fast {t_fast * 1e3:7.1f} ms  "
            f"floor {t_floor * 1e3:7.1f} ms ({row['floor_layout']})  fast/ref "
            f"{row['fast_over_reference']:.2f} (cpu {row['fast_over_reference_cpu']:.2f})  "
            f"fast/floor {row['fast_over_floor']:.2f} (cpu {row['fast_over_floor_cpu']:.2f})",
            flush=True,
        )
    return rows


def _model_pair(name: str, width: int):
    """(fast model, reference model with the same weights)."""
    torch.manual_seed(0)
    fast = create_model(name, width=width)
    reference = copy.deepcopy(fast)
    set_reference_fields(reference)
    return fast, reference


def _nfe(model) -> list[int]:
    return [block.nfe for block in model.ode_blocks()]


def run_training(width: int, batch: int, repeats: int) -> dict:
    """SOBlock's training step, fast and reference fields, against ResNet10's."""
    torch.manual_seed(0)
    resnet = create_model("resnet10", width=width)
    fast, reference = _model_pair("soblock", width)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    natural = create_defense("natural")
    steps = [training_step(m, natural, x, y) for m in (resnet, fast, reference)]
    (t_resnet, c_resnet), (t_fast, c_fast), (t_ref, c_ref) = interleaved_medians_n(
        steps, repeats=repeats
    )
    assert _nfe(fast) == _nfe(reference), (_nfe(fast), _nfe(reference))
    row = {
        "width": width,
        "batch": batch,
        "resnet10_ms": t_resnet * 1e3,
        "soblock_fast_ms": t_fast * 1e3,
        "soblock_reference_ms": t_ref * 1e3,
        "fast_over_resnet10": t_fast / t_resnet,
        "reference_over_resnet10": t_ref / t_resnet,
        "fast_over_resnet10_cpu": c_fast / c_resnet,
        "reference_over_resnet10_cpu": c_ref / c_resnet,
        "nfe": _nfe(fast),
        "target": SOBLOCK_TARGET,
    }
    print(
        f"training step w{width} b{batch}: resnet10 {t_resnet * 1e3:.0f} ms, soblock fast "
        f"{t_fast * 1e3:.0f} ms ({row['fast_over_resnet10']:.2f}×, cpu "
        f"{row['fast_over_resnet10_cpu']:.2f}×), reference {t_ref * 1e3:.0f} ms "
        f"({row['reference_over_resnet10']:.2f}×, cpu {row['reference_over_resnet10_cpu']:.2f}×),"
        f" NFE {row['nfe']}",
        flush=True,
    )
    return row


def run_sonet(width: int, batch: int, repeats: int) -> dict:
    """SONet forward + backward (gradients of the loss w.r.t. every weight)."""
    fast, reference = _model_pair("sonet", width)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))

    def pass_of(model):
        params = list(model.parameters())

        def run() -> None:
            loss = F.cross_entropy(model.train()(x), y)
            torch.autograd.grad(loss, params)

        return run

    (t_fast, c_fast), (t_ref, c_ref) = interleaved_medians_n(
        [pass_of(fast), pass_of(reference)], repeats=repeats
    )
    assert _nfe(fast) == _nfe(reference), (_nfe(fast), _nfe(reference))
    row = {
        "width": width,
        "batch": batch,
        "fast_ms": t_fast * 1e3,
        "reference_ms": t_ref * 1e3,
        "fast_over_reference": t_fast / t_ref,
        "fast_over_reference_cpu": c_fast / c_ref,
        "nfe": _nfe(fast),
        "target": SONET_TARGET,
    }
    print(
        f"SONet forward+backward w{width} b{batch}: fast {t_fast:.1f} s, reference "
        f"{t_ref:.1f} s, ratio {row['fast_over_reference']:.2f} (cpu "
        f"{row['fast_over_reference_cpu']:.2f}), NFE {row['nfe']}",
        flush=True,
    )
    return row


def _met(ratio: float, cpu: float, target: float) -> str:
    def verdict(r: float) -> str:
        return "met" if r <= target else "missed"

    return f"≤ {target} (wall {verdict(ratio)}, cpu {verdict(cpu)})"


def table(fields: list[dict], training: dict, sonet: dict) -> str:
    """Wall-clock ratios, with the CPU-time ratio in parentheses."""
    lines = [
        "| field (batch) | reference (ms) | fast (ms) | conv floor (ms) | fast / reference "
        "| reference / floor | fast / floor | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in fields:
        lines.append(
            f"| {r['shape']} ({r['batch']}) | {r['reference_ms']:.1f} | {r['fast_ms']:.1f} | "
            f"{r['floor_ms']:.1f} {r['floor_layout']} | {r['fast_over_reference']:.2f} "
            f"({r['fast_over_reference_cpu']:.2f}) | {r['reference_over_floor']:.2f} "
            f"({r['reference_over_floor_cpu']:.2f}) | {r['fast_over_floor']:.2f} "
            f"({r['fast_over_floor_cpu']:.2f}) | "
            f"{_met(r['fast_over_floor'], r['fast_over_floor_cpu'], r['target'])} |"
        )
    t, s = training, sonet
    lines += [
        "",
        "| model pass (width, batch) | ResNet10 / reference (ms) | fast (ms) | ratio (cpu) "
        "| target |",
        "|---|---:|---:|---:|---|",
        f"| SOBlock training step / ResNet10's, reference fields (w{t['width']}, "
        f"{t['batch']}) | {t['resnet10_ms']:.0f} | {t['soblock_reference_ms']:.0f} | "
        f"{t['reference_over_resnet10']:.2f} ({t['reference_over_resnet10_cpu']:.2f}) | – |",
        f"| SOBlock training step / ResNet10's, fast fields (w{t['width']}, {t['batch']}) | "
        f"{t['resnet10_ms']:.0f} | {t['soblock_fast_ms']:.0f} | "
        f"{t['fast_over_resnet10']:.2f} ({t['fast_over_resnet10_cpu']:.2f}) | "
        f"{_met(t['fast_over_resnet10'], t['fast_over_resnet10_cpu'], t['target'])} |",
        f"| SONet forward+backward, fast / reference fields (w{s['width']}, {s['batch']}) | "
        f"{s['reference_ms']:.0f} | {s['fast_ms']:.0f} | {s['fast_over_reference']:.2f} "
        f"({s['fast_over_reference_cpu']:.2f}) | "
        f"{_met(s['fast_over_reference'], s['fast_over_reference_cpu'], s['target'])} |",
    ]
    return "\n".join(lines)


def section(
    quick: bool = False,
    width: int = 32,
    batch: int = 128,
    repeats: int = 5,
    sonet_batch: int = 64,
) -> Section:
    """Quick: width 8, batch 16, 3 repeats (a sanity run); full: width 32, batch 128
    (SONet at ``sonet_batch``)."""
    if quick:
        width, batch, repeats, sonet_batch = 8, 16, 3, 16
    fields = run_fields(width, batch, repeats)
    training = run_training(width, batch, repeats)
    sonet = run_sonet(width, sonet_batch, repeats)
    return Section(
        "fields",
        f"Vector fields — fast vs reference implementation and vs their convolutions "
        f"(width {width}, batch {batch}, one evaluation forward+backward); SOBlock and SONet",
        "python -m benchmarks.bench_fields" + (" --quick" if quick else ""),
        table(fields, training, sonet),
        {
            "width": width,
            "batch": batch,
            "repeats": repeats,
            "rows": fields,
            "training": training,
            "sonet": sonet,
        },
    )


def _op_kind(name: str) -> str:
    if "conv" in name or "mkldnn" in name:
        return "convolution"
    if "group_norm" in name:
        return "GroupNorm"
    if "batch_norm" in name:
        return "BatchNorm"
    if "leaky" in name or "relu" in name or "threshold" in name:
        return "activation"
    if name in ("aten::copy_", "aten::clone"):
        return "layout copies"
    return "solver arithmetic and rest"


def _profile_by_kind(run: Callable[[], None], repeats: int) -> dict[str, float]:
    """Self time (ms, per call of ``run``) of the ATen operations, summed by kind."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            run()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            kind = _op_kind(event.key)
            totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / repeats
    return totals


def run_profiles(width: int, batch: int, sonet_batch: int, repeats: int = 3) -> None:
    """Where the time goes: reference vs fast, by operation kind (benchmarks/RESULTS.md)."""
    for label, kind, args in shapes(width)[:4]:
        ref_run, fast_run, _, _ = _cases(kind, args, batch)
        for impl, run in (("reference", ref_run), ("fast", fast_run)):
            totals = _profile_by_kind(run, repeats)
            parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(totals.items()))
            print(f"{label} ({impl}), ms per evaluation: {parts}; total {sum(totals.values()):.0f}")
    for name, b in (("soblock", batch), ("sonet", sonet_batch)):
        fast, reference = _model_pair(name, width)
        x = torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 10, (b,), generator=torch.Generator().manual_seed(2))
        for impl, model in (("reference", reference), ("fast", fast)):

            def run(model=model, x=x, y=y) -> None:
                loss = F.cross_entropy(model.train()(x), y)
                torch.autograd.grad(loss, list(model.parameters()))

            totals = _profile_by_kind(run, 1)
            parts = ", ".join(f"{k} {v / 1e3:.2f}" for k, v in sorted(totals.items()))
            print(f"{name} forward+backward batch {b} ({impl}), s: {parts}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="width 8, batch 16, 3 repeats")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--sonet-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", choices=("fields", "training", "sonet"), default=None)
    p.add_argument(
        "--profile",
        action="store_true",
        help="print where the time goes instead (torch.profiler, by operation kind); "
        "SONet at batch 32",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.profile:
        run_profiles(args.width, args.batch, min(args.sonet_batch, 32))
        return
    if args.only:
        run = {"fields": run_fields, "training": run_training, "sonet": run_sonet}[args.only]
        run(args.width, args.sonet_batch if args.only == "sonet" else args.batch, args.repeats)
        return
    result = section(args.quick, args.width, args.batch, args.repeats, args.sonet_batch)
    result.report(args.json)


if __name__ == "__main__":
    main()
