"""Attacks: the threat model holds in every case, and the known peer defects do not occur."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustode import attacks as A
from robustode.attacks.apgd import checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting(nn.Module):
    """Counts the images every forward pass sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.model(x)


def _tiny_model(kind: str, channels: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(classes))
    if kind == "steep":  # large logits: saturated softmax, huge gradients
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(classes), nn.Hardtanh(-50, 50))
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, classes),
    )


def _random_attack(rng: random.Random, norm: str, eps: float) -> A.Attack:
    seed = rng.randrange(1000)
    kind = rng.choice(
        ["fgsm", "pgd", "ifgsm", "cw-margin", "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t"]
    )
    kind = rng.choice([kind, "square", "eot", "autoattack"])
    if norm == "linf":
        kind = rng.choice([kind, "cw-linf", "spsa"])
    if kind == "fgsm":
        return A.FGSM(norm, eps, seed=seed)
    if kind == "pgd":
        return A.PGD(
            norm,
            eps,
            steps=rng.randint(1, 6),
            step_size=eps * rng.choice([0.1, 0.5, 2.0, 10.0]),  # over-large steps too
            random_start=rng.random() < 0.5,
            restarts=rng.randint(1, 2),
            loss=rng.choice(["ce", "cw", "dlr"]),
            early_stop=rng.random() < 0.5,
            seed=seed,
        )
    if kind == "ifgsm":
        return A.IFGSM(norm, eps, steps=3, step_size=eps / 2, seed=seed)
    if kind == "cw-margin":
        return A.CWMarginPGD(norm, eps, steps=3, step_size=eps / 3, seed=seed)
    large_eps = norm == "l1" and rng.random() < 0.5
    if kind == "apgd-ce":
        return A.APGDCE(norm, eps, steps=rng.randint(1, 8), large_eps=large_eps, seed=seed)
    if kind == "apgd-dlr":
        return A.APGDDLR(norm, eps, steps=rng.randint(1, 8), restarts=2, seed=seed)
    if kind == "apgd-t":
        return A.APGDT(
            norm, eps, steps=rng.randint(1, 5), targets=rng.randint(1, 3), large_eps=large_eps,
            seed=seed,
        )  # fmt: skip
    if kind == "fab":
        return A.FAB(norm, eps, steps=rng.randint(1, 6), restarts=rng.randint(1, 2), seed=seed)
    if kind == "fab-t":
        return A.FABT(norm, eps, steps=rng.randint(1, 6), targets=rng.randint(1, 3), seed=seed)
    if kind == "eot":
        inner = rng.choice(
            [
                A.PGD(norm, eps, steps=rng.randint(1, 4), step_size=eps / 2, seed=seed),
                A.APGDCE(norm, eps, steps=rng.randint(1, 4), seed=seed),
                A.FABT(norm, eps, steps=rng.randint(1, 3), targets=1, seed=seed),
            ]
        )
        return A.EOT(inner, iterations=rng.randint(1, 3))
    if kind == "autoattack":
        return A.autoattack(
            version=rng.choice(["standard", "plus", "rand"]),
            norm=norm,
            eps=eps,
            steps=rng.randint(1, 3),
            queries=rng.randint(1, 5),
            eot_iter=rng.randint(1, 3),
            seed=seed,
        )
    if kind == "cw-linf":
        return A.CarliniWagnerLinf(eps, steps=rng.randint(1, 6), lr=rng.choice([5e-3, 0.1]))
    if kind == "spsa":
        return A.SPSA(eps, iterations=2, samples=rng.randint(1, 4), seed=seed)
    return A.Square(
        eps,
        norm=norm,
        queries=rng.randint(1, 12),
        schedule=rng.choice(["autoattack", "rescaled"]),
        seed=seed,
    )


_EPS_RANGE = {"linf": (-4, -0.5), "l2": (-3, 0.7), "l1": (-2, 1.3)}


def test_every_output_lies_in_the_eps_ball_and_the_box_over_600_random_cases():
    """600 random (attack, model, shape, ε, seed) cases: zero threat-model or budget violations.

    Every attack (FAB, FAB-T, APGD-DLR, APGD-L1 with and without the 3ε/2ε/ε schedule, Square
    L∞/L2/L1, EOT and the AutoAttack versions included) in every norm, L1 included."""
    rng = random.Random(0)
    violations = []
    seen: set[tuple[str, str]] = set()
    for case in range(600):
        norm = rng.choice(["linf", "l2", "l1"])
        eps = 10 ** rng.uniform(*_EPS_RANGE[norm])
        n, c = rng.randint(1, 5), rng.choice([1, 3])
        height, width = rng.randint(3, 8), rng.randint(3, 8)
        classes = rng.randint(4, 6)
        gen = torch.Generator().manual_seed(case)
        x = torch.rand(n, c, height, width, generator=gen)
        # pixels exactly on the box's faces, where clipping decides
        x[torch.rand(x.shape, generator=gen) < 0.2] = 0.0
        x[torch.rand(x.shape, generator=gen) < 0.2] = 1.0
        y = torch.randint(0, classes, (n,), generator=gen)
        model = Counting(_tiny_model(rng.choice(["linear", "steep", "conv"]), c, classes, case))
        with torch.no_grad():
            model.model(x)  # materialise lazy layers
        attack = _random_attack(rng, norm, eps)
        result = attack.run(model, x, y)
        seen.add((norm, attack.name))
        delta = (result.x_adv - x).flatten(1)
        dist = {
            "linf": delta.abs().amax(1),
            "l2": delta.norm(dim=1),
            "l1": delta.abs().sum(1),
        }[norm]
        bound = eps + 1e-6 if norm == "linf" else eps * (1 + 1e-5)
        if (dist > bound).any() or result.x_adv.min() < 0 or result.x_adv.max() > 1:
            violations.append((case, attack.describe(), dist.max().item(), eps))
        if (result.queries > attack.budget()).any():
            violations.append((case, attack.describe(), "queries", result.queries.max().item()))
        # the attack's own calls, plus at most the clean and the final check pass
        if model.images > n * (attack.budget() + 2):
            violations.append((case, attack.describe(), "model images", model.images))
        if any(p.grad is not None for p in model.parameters()):
            violations.append((case, attack.describe(), "left gradients on the model"))
    assert violations == []
    for norm in ("linf", "l2", "l1"):  # the random draw did reach every new attack in every norm
        names = {name for n, name in seen if n == norm}
        assert {"fab", "fab-t", "apgd-dlr", "square", "autoattack"} <= names, (norm, names)
        assert any(name.endswith(("+eot1", "+eot2", "+eot3")) for name in names), norm


def test_a_clean_misclassified_point_is_never_robust_nor_attacked():
    """Random starts and Square's stripes can land a wrong point on a right prediction."""
    model = _Linear2D().eval()
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:6] = (y[:6] + 1) % 4  # six points the model gets wrong
    for attack in (A.APGDCE(steps=3), A.Square(0.01, queries=5), A.create_attack("pgd-linf")):
        result = attack.run(model, x, y)
        assert result.success[:6].all() and not result.clean_correct[:6].any()
        assert (result.queries[:6] == 0).all()
        assert torch.equal(result.x_adv[:6], x[:6])


def test_same_seed_same_result_and_the_global_rng_untouched():
    model = _tiny_model("conv", 3, 5, 0).eval()
    x, y = torch.rand(6, 3, 6, 6), torch.randint(0, 5, (6,))
    state = torch.get_rng_state()
    for make in (
        lambda s: A.PGD("l2", 0.3, steps=3, random_start=True, seed=s),
        lambda s: A.PGD("l1", 2.0, steps=3, random_start=True, seed=s),
        lambda s: A.Square(0.05, queries=20, seed=s),
        lambda s: A.Square(0.5, norm="l2", queries=20, seed=s),
        lambda s: A.Square(3.0, norm="l1", queries=20, seed=s),
        lambda s: A.SPSA(0.05, iterations=2, samples=3, seed=s),
        lambda s: A.APGDCE("l1", 2.0, steps=3, large_eps=True, seed=s),
    ):
        a, b, c = make(1).run(model, x, y), make(1).run(model, x, y), make(2).run(model, x, y)
        assert torch.equal(a.x_adv, b.x_adv)
        assert not torch.equal(a.x_adv, c.x_adv)
    assert torch.equal(torch.get_rng_state(), state)


def test_model_mode_is_restored_and_batchnorm_statistics_untouched():
    model = _tiny_model("conv", 3, 5, 0)
    model.train()
    model[0].eval()  # a submodule with its own mode must keep it
    bn = model[1]
    before = bn.running_mean.clone()
    x, y = torch.rand(4, 3, 6, 6), torch.randint(0, 5, (4,))
    A.create_attack("pgd-linf", steps=3).run(model, x, y)
    assert model.training and bn.training and not model[0].training
    assert torch.equal(bn.running_mean, before)  # attacked in eval mode


class _Oscillating(nn.Module):
    """Two classes on a 1-D input: class 1 wins only on (0.55, 0.65), class 0 elsewhere.

    Sign-gradient steps of 0.08 from 0.5 go 0.58 (adversarial) → 0.66 (not):
    the last iterate of PGD-2 is not adversarial, the first one was.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 1 - 20 * (x.flatten(1)[:, :1] - 0.6).abs()
        return torch.cat([torch.zeros_like(f), f], dim=1)


def test_pgd_returns_an_earlier_adversarial_iterate_not_the_last_one():
    model, x, y = _Oscillating(), torch.full((1, 1), 0.5), torch.zeros(1, dtype=torch.long)
    attack = A.PGD("linf", 0.3, steps=2, step_size=0.08, random_start=False, early_stop=False)
    result = attack.run(model, x, y, trace=True)
    assert result.success.item()
    assert result.x_adv.item() == pytest.approx(0.58)
    # the last iterate itself was not adversarial
    last = A.PGD(
        "linf", 0.3, steps=2, step_size=0.08, random_start=False, select="last", early_stop=False
    )
    assert not last.run(model, x, y).success.item()
    ta = pytest.importorskip("torchattacks")
    peer = ta.PGD(model, eps=0.3, alpha=0.08, steps=2, random_start=False)(x, y)
    assert model(peer).argmax(1).item() == 0  # the peer defect, reproduced


def test_l2_random_start_is_uniform_in_the_ball():
    """Radius of a uniform point in the d-ball: P(r ≤ ρε) = ρ^d, so (r/ε)^d is U(0, 1)."""
    stats = pytest.importorskip("scipy.stats")
    threat = A.ThreatModel("l2", 0.5)
    x = torch.full((4000, 3, 4, 4), 0.5)
    d = x[0].numel()
    delta = threat.random_delta(x, torch.Generator().manual_seed(0))
    radius = delta.flatten(1).norm(dim=1).double() / 0.5
    assert radius.max() <= 1 + 1e-6
    assert stats.kstest((radius**d).numpy(), "uniform").pvalue > 0.01
    # a uniform radius (the peer defect) fails the same test
    wrong = torch.rand(4000, dtype=torch.float64)
    assert stats.kstest((wrong**d).numpy(), "uniform").pvalue < 1e-6
    # and the direction is isotropic: mean of unit vectors ≈ 0
    unit = delta.flatten(1) / delta.flatten(1).norm(dim=1, keepdim=True)
    assert unit.mean(0).abs().max() < 0.1


def test_cw_margin_is_right_when_every_logit_is_negative():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -7.0, -4.0]])
    y = torch.tensor([0, 0])
    assert A.cw_margin(logits, y).tolist() == [4.0, -2.0]
    onehot = F.one_hot(y, 3).float()
    buggy = ((1 - onehot) * logits).amax(1) - logits.gather(1, y[:, None]).squeeze(1)
    assert buggy.tolist() == [5.0, 2.0]  # the peer defect: claims point 2 is broken
    assert A.largest_other_logit(logits, y).tolist() == [-1.0, -4.0]
    # DLR uses the same largest-other logit: shift and scale invariant
    assert torch.allclose(A.dlr(logits, y), A.dlr(3 * logits - 10, y))


def test_apgd_checkpoints_follow_autoattacks_integer_rule():
    """AutoAttack: first check after 22 % of N, periods shrink by 3 % of N, never below 6 %."""
    n = 100
    first, shrink, minimum = 22, 3, 6  # 22 %, 3 % and 6 % of 100
    expected, mark, period = [], first, first
    while mark < n:
        expected.append(mark)
        period = max(period - shrink, minimum)
        mark += period
    assert checkpoints(n) == expected == [22, 41, 57, 70, 80, 87, 93, 99]


class _Linear2D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)


def test_ensemble_is_the_per_point_worst_case_and_below_each_member():
    model = _Linear2D().eval()
    x = torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # every point clean-correct
    y[:8] = (y[:8] + 1) % 4  # and a few not
    members = [
        A.FGSM("linf", 0.05),
        A.PGD("linf", 0.05, steps=5, step_size=0.01, random_start=False),
        A.CWMarginPGD("linf", 0.05, steps=5, step_size=0.01, random_start=False),
    ]
    alone = [m.run(model, x, y) for m in members]
    ensemble = A.AttackEnsemble(members).run(model, x, y)
    worst = torch.stack([r.robust for r in alone]).all(0)
    assert torch.equal(ensemble.robust, worst)
    assert all(ensemble.robust_accuracy <= r.robust_accuracy for r in alone)
    assert 0 < ensemble.robust_accuracy < 1  # the case is not trivial
    rows = ensemble.extra["per_attack"]
    assert [r["attack"] for r in rows] == ["fgsm", "pgd", "cw-margin"]
    assert rows[-1]["robust_accuracy"] == ensemble.robust_accuracy
    assert A.ThreatModel("linf", 0.05).contains(ensemble.x_adv, x).all()


def test_autoattack_preset_is_the_standard_version_and_says_so():
    model = _Linear2D().eval()
    x, y = torch.rand(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)
    attack = A.create_attack("autoattack", eps=0.01)
    report = A.ensemble_report(attack.run(model, x, y), title="autoattack")
    assert "AutoAttack standard version" in report
    assert [a.name for a in attack.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [a.name for a in A.create_attack("standard").attacks] == [
        "apgd-ce", "apgd-t", "fab-t", "square",
    ]  # fmt: skip


def test_early_stop_does_not_change_which_points_are_broken():
    model = _Linear2D().eval()
    x = torch.rand(32, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(2))
    kwargs = {"steps": 10, "step_size": 0.01, "random_start": False}
    fast = A.PGD("linf", 0.04, early_stop=True, **kwargs).run(model, x, y)
    full = A.PGD("linf", 0.04, early_stop=False, **kwargs).run(model, x, y)
    assert torch.equal(fast.success, full.success)
    assert fast.queries.sum() < full.queries.sum()


def test_one_long_pgd_run_gives_every_shorter_runs_robust_accuracy():
    """Without random start PGD-k is a prefix of PGD-K: first_adversarial predicts each PGD-k."""
    model = _Linear2D().eval()
    x = torch.rand(48, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 4, (48,), generator=torch.Generator().manual_seed(4))
    kwargs = {"step_size": 0.004, "random_start": False}
    long = A.PGD("linf", 0.04, steps=30, **kwargs).run(model, x, y)
    first = long.first_adversarial
    assert first is not None and first.shape == (48,)
    assert torch.equal(first >= 0, long.success)
    assert (first[~long.clean_correct] == 0).all()
    seen = set()
    for k in (1, 3, 7, 15, 30):
        short = A.PGD("linf", 0.04, steps=k, batch_size=20, **kwargs).run(model, x, y)
        predicted = (first >= 0) & (first <= k)
        assert torch.equal(short.success, predicted), k
        seen.add(int(predicted.sum()))
    assert len(seen) > 2  # the curve moves, so the comparison means something


def test_presets_carry_the_papers_settings():
    pgd = A.create_attack("pgd20-linf")
    assert (pgd.threat.eps, pgd.step_size, pgd.steps, pgd.random_start) == (0.031, 0.003, 20, False)
    l2 = A.create_attack("pgd1000-l2")
    assert (l2.threat.norm, l2.threat.eps, l2.step_size, l2.steps) == ("l2", 0.5, 0.1, 1000)
    spsa = A.create_attack("spsa")
    assert (spsa.threat.eps, spsa.iterations, spsa.samples, spsa.delta, spsa.lr) == (
        8 / 255, 20, 32, 0.01, 0.01
    )  # fmt: skip
    cw = A.create_attack("cw-linf")
    assert (cw.search_steps, cw.steps, cw.lr, cw.initial_const) == (1, 100, 5e-3, 1e-2)
    square = A.create_attack("square")
    assert (square.queries, square.p_init) == (5000, 0.8)
    assert A.create_attack("ifgsm20", step_size=0.5 / 255, eps=1 / 255).step_size == 0.5 / 255


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x, y: A.PGD()(m, x * 2, y), "must lie in [0, 1]"),
        (lambda m, x, y: A.PGD()(m, (x * 255).to(torch.uint8), y), "floating-point"),
        (lambda m, x, y: A.PGD()(m, x, y[:2]), "labels must have shape"),
        (lambda m, x, y: A.PGD()(m, x, y.float()), "integer tensor"),
        (lambda m, x, y: A.PGD(eps=-1), "eps must be a finite number > 0"),
        (lambda m, x, y: A.PGD(eps=2.0), "exceeds the box width"),
        (lambda m, x, y: A.PGD(steps=0), "steps must be an integer ≥ 1"),
        (lambda m, x, y: A.PGD(norm="l3"), "unknown norm"),
        (lambda m, x, y: A.EOT(A.Square(), iterations=2), "EOT needs a gradient attack"),
        (lambda m, x, y: A.PGD(eot_iter=0), "eot_iter must be an integer ≥ 1"),
        (lambda m, x, y: A.Square(schedule="fast"), "Square's schedule must be one of"),
        (lambda m, x, y: A.FAB(beta=1.5), "beta (the step back toward x) must be < 1"),
        (lambda m, x, y: A.create_attack("autoattack", version="x"), "unknown AutoAttack version"),
        (lambda m, x, y: A.create_attack("pgd30"), "unknown attack 'pgd30'; choose one of"),
        (lambda m, x, y: A.create_attack("fgsm", steps=3), "has no option 'steps'"),
        (lambda m, x, y: A.PGD(loss="mse"), "unknown attack loss"),
        (
            lambda m, x, y: A.APGDT(steps=2)(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), x, y),
            "needs at least 4 classes",
        ),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    model = _Linear2D().eval()
    x, y = torch.rand(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=None) as info:
        call(model, x, y)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_non_finite_logits_are_an_error_not_a_robustness_number():
    class Broken(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"))

    x, y = torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    for attack in (A.PGD(steps=2), A.Square(queries=3), A.SPSA(iterations=1, samples=2)):
        with pytest.raises(A.AttackError, match="non-finite logits"):
            attack.run(Broken(), x, y)
