"""Attacks on real CIFAR-10 images: against torchattacks, and on a naturally trained ResNet10.

torchattacks (installed with --no-deps by scripts/setup.sh test) is the
oracle: with matched settings, our robust accuracy must be at most 2 points
above its own on ≥ 500 real test images (lower means stronger — allowed);
1 point for the AutoAttack pieces of issue 19 (FAB, FAB-T, APGD L2, Square
L2); PGD with EOT on a randomised model, 2 points of a 20-pass mean accuracy.
"""

from __future__ import annotations

import pytest
import torch
from benchmarks.attack_peers import (
    Randomised,
    autoattack_pairs,
    eot_pair,
    expected_accuracy,
    peer_pairs,
    read_cifar,
    robust_accuracy,
    small_cnn,
    train_small_model,
)

from robustode.attacks import create_attack, seeded_model_rng
from robustode.models import create_model

from .cifar_subset import CIFAR_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar():
    if not (CIFAR_DIR / "test_batch").is_file():
        pytest.skip(f"no CIFAR-10 subset at {CIFAR_DIR} (../shared/data, or ROBUSTODE_CIFAR10_DIR)")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield read_cifar(CIFAR_DIR, "train"), read_cifar(CIFAR_DIR, "test", 500)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_model(cifar):
    (x_train, y_train), _ = cifar
    torch.manual_seed(0)
    return train_small_model(small_cnn(), x_train, y_train, epochs=6)


def test_natural_resnet10_falls_to_at_most_5_percent_under_pgd20(cifar):
    (x_train, y_train), (x, y) = cifar
    # The learning rate decays linearly to 0. With a constant one the last weights are one step
    # of a noisy walk: clean accuracy 0.27–0.42 and robust 0.002–0.030 over seeds 0–4 × 1 and
    # 2 threads, on one user's machine clean 0.288 — the former `clean > 0.3` and
    # `robust <= 0.02` both failed somewhere. With the decay, measured over seeds 0–4
    # (weights, batch order, flips) × 1 and 2 threads, Xeon (AVX-512), and seeds 0–2 with AVX2
    # kernels (ATEN_CPU_CAPABILITY=avx2), 2026-11-29: clean 0.406–0.480, robust under PGD-20
    # 0.002–0.026 (1–13 of 500 points survive). The thresholds leave ≥ 0.1 and ≥ 0.024 of
    # margin and still tell a working attack (≈ 0) from a broken one (≈ clean, ≥ 0.4).
    model = create_model("resnet10", width=8, seed=0)
    model = train_small_model(model, x_train, y_train, epochs=4, decay=True)
    clean = robust_accuracy(model, x, y)
    assert clean > 0.3  # it learned real features (chance is 0.1 ± 0.013 on 500 images)
    result = create_attack("pgd20-linf", eps=8 / 255).run(model, x, y)
    assert result.robust_accuracy <= 0.05
    assert result.clean_accuracy == pytest.approx(clean)


# Square, SPSA and APGD-T run with smaller budgets than benchmarks/bench_attacks.py (1000
# queries, 20 iterations, 9 targets) to fit CI: torchattacks' SPSA alone takes minutes at the
# full setting.
@pytest.mark.parametrize(
    "pair", peer_pairs(square_queries=500, spsa_iterations=5, apgdt_targets=3), ids=lambda p: p.name
)
def test_robust_accuracy_is_at_most_2_points_above_torchattacks(pair, cifar, small_model):
    pytest.importorskip("torchattacks")
    _, (x, y) = cifar
    attack = pair.ours()
    ours = attack.run(small_model, x, y)
    assert attack.threat.contains(ours.x_adv, x).all()
    peer = robust_accuracy(small_model, pair.peer(small_model)(x, y), y)
    clean = robust_accuracy(small_model, x, y)
    assert clean - peer > 0.02, "the peer breaks too few points for a meaningful comparison"
    assert ours.robust_accuracy <= peer + 0.02, (pair.name, ours.robust_accuracy, peer)


# FAB at 20 iterations and FAB-T / APGD-T with 3 targets to fit CI (benchmarks/bench_attacks.py
# runs 100 iterations and 9 targets); both sides run the same settings.
@pytest.mark.parametrize(
    "pair", autoattack_pairs(fab_steps=20, targets=3, square_queries=300), ids=lambda p: p.name
)
def test_autoattack_pieces_are_at_most_1_point_above_torchattacks(pair, cifar, small_model):
    pytest.importorskip("torchattacks")
    _, (x, y) = cifar
    attack = pair.ours()
    ours = attack.run(small_model, x, y)
    assert attack.threat.contains(ours.x_adv, x).all()
    peer = robust_accuracy(small_model, pair.peer(small_model)(x, y), y)
    clean = robust_accuracy(small_model, x, y)
    assert clean - peer > 0.02, "the peer breaks too few points for a meaningful comparison"
    assert ours.robust_accuracy <= peer + 0.01, (pair.name, ours.robust_accuracy, peer)


def test_eot_pgd_is_at_most_2_points_above_torchattacks_on_a_randomised_model(cifar, small_model):
    """Both attack the small CNN behind input noise and a random resize. Each verdict is the
    accuracy averaged over 20 passes (one pass is too noisy to compare two attacks by 1 point),
    on the points our clean pass attacked (the peer attacks every point)."""
    pytest.importorskip("torchattacks")
    _, (x, y) = cifar
    model = Randomised(small_model).eval()
    pair = eot_pair(steps=10, eot_iter=5)
    ours = pair.ours().run(model, x, y)
    with seeded_model_rng(1, x.device):
        peer_adv = pair.peer(model)(x, y)
    kept = ours.clean_correct
    with seeded_model_rng(2, x.device):
        clean = expected_accuracy(model, x[kept], y[kept], 20)
        ours_acc = expected_accuracy(model, ours.x_adv[kept], y[kept], 20)
        peer_acc = expected_accuracy(model, peer_adv[kept], y[kept], 20)
    assert clean - peer_acc > 0.05, "the peer breaks too few points for a meaningful comparison"
    # measured ours − peer over attack seeds 0–2 (2 threads, 2026-11-29): −0.9, +0.4, +1.3
    # points (the verdicts average 20 random passes, still noisy): 2 points, as the pairs above
    assert ours_acc <= peer_acc + 0.02, (ours_acc, peer_acc)
