"""ODE solve: robustode's native engine vs torchdiffeq 0.2.5 (issue 7, item 1).

Two vector fields, both SONet reference skew conv blocks (GroupNorm, LeakyReLU):

- ``stem``: the SOBlock stem, 3 → width channels on 32×32 input, batch 128;
- ``stage``: one SONet stage-2 block, 2·width → 2·width channels on 16×16, batch 32
  (ten times the stem's work per evaluation, so a smaller batch and the tol-0.1 and
  fixed-step cases only).

Every method of torchdiffeq 0.2.5 but scipy_solver: the adaptive ones at tol
0.1 and 0.01, the fixed-grid ones (Adams included) with step 0.25. Both
solvers must take the same grid (asserted through equal NFE) so the ratio
compares equal work. Targets (CPU): ≤ 0.7 adaptive, ≤ 0.8 fixed-step.
``--quick``: the stem at batch 32, five methods (dopri5, dopri8, fehlberg2 at
0.1; rk4, implicit_adams), 3 repeats.

    python -m benchmarks.bench_ode [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse

import torch
import torchdiffeq

from robustode.nn import SkewConvODE
from robustode.ode import ADAPTIVE_METHODS, StepRecord, odeint

from .section import Section
from .timing import interleaved_medians

# (method, tolerance or None for a fixed grid of step 0.25, in the --quick subset)
CASES = [
    ("dopri5", 0.1, True),
    ("dopri5", 0.01, False),
    ("dopri8", 0.1, True),
    ("dopri8", 0.01, False),
    ("bosh3", 0.1, False),
    ("bosh3", 0.01, False),
    ("fehlberg2", 0.1, True),
    ("fehlberg2", 0.01, False),
    ("adaptive_heun", 0.1, False),
    ("adaptive_heun", 0.01, False),
    ("rk4", None, True),
    ("euler", None, False),
    ("midpoint", None, False),
    ("heun2", None, False),
    ("heun3", None, False),
    ("explicit_adams", None, False),
    ("implicit_adams", None, True),
]
# the Adams corrector's convergence test uses rtol/atol (torchdiffeq's defaults are
# below float32 resolution there: it would warn and drop history every step)
ADAMS_TOL = 1e-3


class _Counted(torch.nn.Module):
    def __init__(self, field) -> None:
        super().__init__()
        self.field, self.nfe = field, 0

    def forward(self, t, y):
        self.nfe += 1
        return self.field(t, y)


FIELDS = {
    # name: (in channels, out channels, spatial size, batch, cases) as multiples of width
    "stem": (0, 1, 32, 128, CASES),
    "stage": (2, 2, 16, 32, [c for c in CASES if c[1] in (0.1, None)]),
}


def target(method: str) -> float:
    return 0.7 if method in ADAPTIVE_METHODS else 0.8


def run(
    width: int, batch: int | None, repeats: int, quick: bool, field: str = "stem"
) -> list[dict]:
    c_in, c_out, size, default_batch, cases = FIELDS[field]
    batch = default_batch if batch is None else batch
    torch.manual_seed(0)
    # The reference field (NCHW, as torchdiffeq's flattened state is): this section times
    # the engines around one field; the fast fields have their own section (bench_fields).
    block = SkewConvODE(c_in * width or 3, c_out * width, reference=True)
    x = torch.rand(batch, block.in_channels, size, size)
    state0 = block.initial_state(x)
    t = torch.tensor([0.0, 1.0])
    rows = []
    cases = [c for c in cases if c[2]] if quick else cases
    for method, tol, _ in cases:
        kw = dict(method=method)
        if tol is not None:
            kw.update(rtol=tol, atol=tol)
        else:
            kw.update(options={"step_size": 0.25})
            if method.endswith("adams"):
                kw.update(rtol=ADAMS_TOL, atol=ADAMS_TOL)
        for mode in ("forward", "forward+backward"):
            grad = mode != "forward"
            ours_rec = StepRecord()
            peer = _Counted(block.field)

            def ours(grad=grad, rec=ours_rec, kw=kw):
                rec.reset()
                xin = x.clone().requires_grad_(grad)
                with torch.set_grad_enabled(grad):
                    out = odeint(block.field, (xin, state0[1]), t, record=rec, **kw)[1][-1]
                    if grad:
                        out.sum().backward()

            def theirs(grad=grad, peer=peer, kw=kw):
                peer.nfe = 0
                xin = x.clone().requires_grad_(grad)
                with torch.set_grad_enabled(grad):
                    out = torchdiffeq.odeint(peer, (xin, state0[1]), t, **kw)[1][-1]
                    if grad:
                        out.sum().backward()

            t_ours, t_peer = interleaved_medians(ours, theirs, repeats=repeats)
            assert ours_rec.nfe_forward == peer.nfe, (method, tol, ours_rec.nfe_forward, peer.nfe)
            rows.append(
                {
                    "field": field,
                    "batch": batch,
                    "target": target(method),
                    "method": method,
                    "tol": tol,
                    "mode": mode,
                    "nfe": peer.nfe,
                    "ours_s": t_ours,
                    "torchdiffeq_s": t_peer,
                    "ratio": t_ours / t_peer,
                }
            )
            print(
                f"{field:>5} {method:>13} tol={tol!s:>5} {mode:>16}: nfe {peer.nfe:3d}  "
                f"ours {t_ours * 1e3:8.1f} ms  torchdiffeq {t_peer * 1e3:8.1f} ms  "
                f"ratio {t_ours / t_peer:.2f}",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| field | batch | method | tol | mode | NFE | ours (ms) | torchdiffeq (ms) | ratio "
        "| target |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        met = "met" if r["ratio"] <= r["target"] else "missed"
        lines.append(
            f"| {r['field']} | {r['batch']} | {r['method']} | {r['tol'] or '—'} | {r['mode']} | "
            f"{r['nfe']} | {r['ours_s'] * 1e3:.0f} | {r['torchdiffeq_s'] * 1e3:.0f} | "
            f"{r['ratio']:.2f} | ≤ {r['target']} ({met}) |"
        )
    return "\n".join(lines)


def section(quick: bool = False, width: int = 32, repeats: int = 5) -> Section:
    """The ODE rows: quick = the stem at batch 32, five methods, 3 repeats."""
    if quick:
        rows = run(width, 32, 3, True, "stem")
    else:
        rows = run(width, None, repeats, False, "stem") + run(width, None, repeats, False, "stage")
    return Section(
        "ode",
        "ODE solve — native engine vs torchdiffeq 0.2.5 (same grid, equal NFE asserted)",
        "python -m benchmarks.bench_ode" + (" --quick" if quick else ""),
        table(rows),
        {"width": width, "rows": rows},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the stem only, batch 32, 5 methods")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    result = section(args.quick, args.width, args.repeats)
    result.report(args.json)


if __name__ == "__main__":
    main()
