"""Training-step cost of each defense, as ratios measured in the same run (issue 7, item 4).

One step = the defense's loss on a batch, backward, SGD update — what the
trainer does per batch. Pairs are timed interleaved (A B A B …, median of
``--repeats`` after a warm-up) on the same model, weights and batch:

- LAD vs natural and LAD-SM vs natural (target ≤ 2.1: two forward/backward
  passes make 2.0 the floor);
- PGD-AT + LAD vs PGD-AT (target ≤ 1.12: LAD adds one pass to PGD's eleven);
- TRADES vs PGD-AT (no target; reported).

    python -m benchmarks.bench_training [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse

import torch

from robustode.defenses import create_defense
from robustode.models import create_model

from .section import Section
from .timing import interleaved_medians

# (label, defense A, options A, defense B, options B, target ratio A/B or None)
PAIRS: list[tuple[str, str, dict, str, dict, float | None]] = [
    ("LAD / natural", "lad", {"base": "natural"}, "natural", {}, 2.1),
    ("LAD-SM / natural", "lad_sm", {"base": "natural"}, "natural", {}, 2.1),
    ("PGD-AT + LAD / PGD-AT", "lad", {"base": "pgd_at"}, "pgd_at", {}, 1.12),
    ("TRADES / PGD-AT", "trades", {}, "pgd_at", {}, None),
]
# resnet10 at width 32, not the paper's 64: on a 2-core CPU one PGD-AT step of the width-64
# model takes ~40 s, and the two PGD pairs need 24 of them per model
MODELS = {"resnet10": {"width": 32}, "preact_resnet56": {}}


def training_step(model: torch.nn.Module, defense, x: torch.Tensor, y: torch.Tensor):
    """One timed training step of ``defense``, always from the same weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def step() -> None:
        model.load_state_dict(state)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = defense(model, x, y)
        loss.backward()
        optimizer.step()

    return step


def run(models: dict[str, dict], batch: int, repeats: int) -> list[dict]:
    rows = []
    for model_name, options in models.items():
        torch.manual_seed(0)
        model = create_model(model_name, **options)
        x = torch.rand(batch, 3, 32, 32)
        y = torch.randint(0, 10, (batch,))
        for label, name_a, opt_a, name_b, opt_b, target in PAIRS:
            step_a = training_step(model, create_defense(name_a, **opt_a), x, y)
            step_b = training_step(model, create_defense(name_b, **opt_b), x, y)
            t_a, t_b = interleaved_medians(step_a, step_b, repeats=repeats)
            ratio = t_a / t_b
            met = None if target is None else ratio <= target
            rows.append(
                {
                    "model": model_name,
                    "pair": label,
                    "a_s": t_a,
                    "b_s": t_b,
                    "ratio": ratio,
                    "target": target,
                    "met": met,
                }
            )
            verdict = (
                "" if target is None else f" (target ≤ {target}: {'met' if met else 'MISSED'})"
            )
            print(
                f"{model_name:>16} {label:>22}: {t_a * 1e3:8.1f} ms / {t_b * 1e3:8.1f} ms "
                f"= {ratio:.2f}{verdict}",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | pair | A (ms) | B (ms) | ratio A/B | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        target = (
            "–" if r["target"] is None else f"≤ {r['target']} ({'met' if r['met'] else 'missed'})"
        )
        lines.append(
            f"| {r['model']} | {r['pair']} | {r['a_s'] * 1e3:.1f} | {r['b_s'] * 1e3:.1f} | "
            f"{r['ratio']:.2f} | {target} |"
        )
    return "\n".join(lines)


def section(quick: bool = False, batch: int = 128, repeats: int = 5) -> Section:
    """Quick: resnet10 width 16 at batch 32, 3 repeats; full: resnet10 w32 and preact56."""
    models = {"resnet10": {"width": 16}} if quick else MODELS
    batch, repeats = (32, 3) if quick else (batch, repeats)
    rows = run(models, batch, repeats)
    return Section(
        "training",
        f"Training step per defense (batch {batch}, one step = loss, backward, SGD)",
        "python -m benchmarks.bench_training" + (" --quick" if quick else ""),
        table(rows),
        {"batch": batch, "repeats": repeats, "rows": rows},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="resnet10 width 16, batch 32, 3 repeats")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    result = section(args.quick, args.batch, args.repeats)
    result.report(args.json)


if __name__ == "__main__":
    main()
