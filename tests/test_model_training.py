"""A plain SGD loop on real CIFAR-10 images lowers the loss of the papers' backbones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustode.models import create_model

from .cifar_subset import cifar_train_images


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet10", {"width": 32}),
        ("soblock", {"width": 32, "method": "euler"}),  # one Euler step keeps the test fast
        ("preact_resnet56", {}),
    ],
)
def test_100_sgd_steps_lower_the_training_loss(name, options):
    x, y = cifar_train_images(256)
    model = create_model(name, seed=0, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    gen = torch.Generator().manual_seed(0)

    def loss_on_all() -> float:
        model.eval()
        with torch.no_grad():
            value = float(F.cross_entropy(model(x), y))
        model.train()
        return value

    before = loss_on_all()
    step_losses = []
    for _ in range(100):
        idx = torch.randint(0, len(x), (32,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_losses.append(loss.item())
    after = loss_on_all()
    first, last = sum(step_losses[:10]) / 10, sum(step_losses[-10:]) / 10
    assert before > 2.0, "an untrained 10-class model starts near ln 10"
    assert after <= 0.8 * before, f"{name}: loss {before:.3f} → {after:.3f}"
    assert last <= 0.8 * first, f"{name}: step loss {first:.3f} → {last:.3f}"
