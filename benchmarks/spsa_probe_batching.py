"""How much SPSA's batching moves what it measures on batch-shared step control (docs/attacks.md).

An adaptive solver with one step grid per batch (dopri5 at tol 0.1, ``step_control="batch"``)
gives an image's logits that depend on the rest of its batch. For SPSA on one image
(``per_image=True``) the 2·samples probes x ± δ·v still share one solve by default
(``probes_together=True``, the reference's way). Per model, on untrained weights (seed 0)
and uniform-noise 32×32 images (seed 0), float32 as deployed:

- probes: the largest |logit| change of a probe between its 64-probe batch (32 samples,
  δ 0.01) and alone, over the largest |logit|; the cosine between SPSA's gradient estimate
  ĝ from the batched probes and from probes alone (median over the images);
- images: the largest |logit| change of an image between a batch of 16 images and alone,
  over the largest |logit| — what batched SPSA without ``per_image`` lets other images do.

    python -m benchmarks.spsa_probe_batching
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustode.attacks import cw_margin
from robustode.models import create_model

MODELS = [
    ("soblock", {"width": 16}),
    ("sonet", {"width": 8}),
    ("sonet_paper_text", {"width": 8}),
]
SAMPLES, DELTA, IMAGES = 32, 0.01, 4


@torch.no_grad()
def probe_effect(model: torch.nn.Module, x: torch.Tensor, gen: torch.Generator):
    """(largest probe logit change / largest logit, cosine of the two ĝ) for one image."""
    v = (2 * torch.randint(0, 2, (SAMPLES, *x.shape[1:]), generator=gen) - 1).float()
    probes = x + DELTA * torch.cat([v, -v])
    together = model(probes)
    alone = torch.cat([model(p[None]) for p in probes])
    y = model(x).argmax(1).repeat(2 * SAMPLES)
    grads = []
    for logits in (together, alone):
        m = -cw_margin(logits, y)
        diff = (m[:SAMPLES] - m[SAMPLES:]) / (2 * DELTA)
        grads.append((diff.view(-1, 1, 1, 1) * v).mean(0).flatten())
    change = float((together - alone).abs().max() / alone.abs().max())
    return change, float(F.cosine_similarity(grads[0], grads[1], dim=0))


@torch.no_grad()
def image_effect(model: torch.nn.Module, x: torch.Tensor) -> float:
    together = model(x)
    alone = torch.cat([model(x[i : i + 1]) for i in range(x.shape[0])])
    return float((together - alone).abs().max() / alone.abs().max())


def main() -> None:
    torch.set_num_threads(1)
    print(
        "| model | probe logit change (max / max logit) | cos(ĝ batched probes, ĝ alone), "
        "median | image logit change in a batch of 16 |"
    )
    print("|---|---:|---:|---:|")
    for name, options in MODELS:
        model = create_model(name, seed=0, **options).eval()
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(16, 3, 32, 32, generator=gen)
        effects = [probe_effect(model, x[i : i + 1], gen) for i in range(IMAGES)]
        change = max(e[0] for e in effects)
        cosine = float(torch.tensor([e[1] for e in effects]).median())
        described = ", ".join(f"{k} {v}" for k, v in options.items())
        print(
            f"| {name} ({described}) | {change:.2g} | {cosine:.3f} | {image_effect(model, x):.2g} |"
        )


if __name__ == "__main__":
    main()
