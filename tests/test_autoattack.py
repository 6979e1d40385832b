"""AutoAttack's pieces against independent facts: projections against a linear program and
bisection, FAB against the closed-form distance to a linear boundary, Square's pattern against
its closed form, EOT's seeds, AutoAttack's compositions and its verdict on randomised models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustode import attacks as A
from robustode.attacks.apgd import large_eps_schedule
from robustode.attacks.square import square_fraction, square_pattern
from robustode.evaluate.suites import AUTOATTACK_RAND, resolve_attacks

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ projections
def _l1_box_by_bisection(v, low, high, eps):
    """The KKT point of min ‖δ − v‖² s.t. ‖δ‖₁ ≤ ε, low ≤ δ ≤ high, λ by bisection in float64."""
    v, low, high = v.double(), low.double(), high.double()
    room = torch.where(v >= 0, high, -low).clamp_min(0)
    rows = []
    for i in range(v.shape[0]):

        def mass(lam, i=i):
            return torch.minimum((v[i].abs() - lam).clamp_min(0), room[i]).sum().item()

        lo, hi = 0.0, v[i].abs().max().item()
        if mass(0.0) > eps:
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if mass(mid) > eps else (lo, mid)
        else:
            hi = 0.0
        rows.append(v[i].sign() * torch.minimum((v[i].abs() - hi).clamp_min(0), room[i]))
    return torch.stack(rows)


@pytest.mark.parametrize("d", [1, 7, 300, 3072])
def test_l1_projection_onto_ball_and_box_is_the_kkt_point(d):
    gen = torch.Generator().manual_seed(d)
    x = torch.rand(12, d, generator=gen)
    x[torch.rand(x.shape, generator=gen) < 0.2] = 0.0  # pixels on the box's faces
    x[torch.rand(x.shape, generator=gen) < 0.2] = 1.0
    v = torch.randn(12, d, generator=gen) * torch.rand(12, 1, generator=gen) * 3
    for eps in (0.01, 1.0, 12.0):
        ours = A.project_l1_box(v, -x, 1 - x, eps)
        expected = _l1_box_by_bisection(v, -x, 1 - x, eps)
        assert torch.allclose(ours.double(), expected, atol=1e-6 * max(eps, 1), rtol=0)
        assert (ours.abs().sum(1) <= eps * (1 + 1e-6)).all()
        assert ((x + ours >= 0) & (x + ours <= 1)).all()
        # a projection: projecting again changes nothing
        again = A.project_l1_box(ours, -x, 1 - x, eps)
        assert torch.allclose(again, ours, atol=1e-6)


def test_l1_projection_beats_clipping_the_balls_projection():
    """Why the box must be in the projection: clipping after the ball wastes L1 budget."""
    x = torch.tensor([[0.95, 0.05, 0.5, 0.5]])
    v = torch.tensor([[2.0, -2.0, 0.6, 0.5]])
    exact = A.project_l1_box(v, -x, 1 - x, 1.0)
    assert exact.abs().sum().item() == pytest.approx(1.0, abs=1e-6)  # the whole budget is used
    ball_only = A.project_l1_box(v, torch.full_like(x, -9), torch.full_like(x, 9), 1.0)
    clipped = (x + ball_only).clamp(0, 1) - x
    assert clipped.abs().sum().item() < 0.2  # the box cuts most of it away
    assert ((exact - v) ** 2).sum() < ((clipped - v) ** 2).sum()


def _minimal_norm_by_lp(norm, t, w, b):
    """min ‖d‖ (L∞ or L1) s.t. ⟨w, t + d⟩ = b, 0 ≤ t + d ≤ 1, as a linear program."""
    optimize = pytest.importorskip("scipy.optimize")
    d = t.numel()
    t, w = t.double().numpy(), w.double().numpy()
    if norm == "linf":  # variables (d, s): min s, −s ≤ d_i ≤ s
        cost = [0.0] * d + [1.0]
        a_ub = []
        for i in range(d):
            row = [0.0] * (d + 1)
            row[i], row[d] = 1.0, -1.0
            a_ub.append(row)
            row = [0.0] * (d + 1)
            row[i], row[d] = -1.0, -1.0
            a_ub.append(row)
        a_eq = [[*w.tolist(), 0.0]]
        bounds = [(-ti, 1 - ti) for ti in t] + [(0, None)]
    else:  # d = p − q, p, q ≥ 0: min Σ p + q
        cost = [1.0] * (2 * d)
        a_ub = None
        a_eq = [[*w.tolist(), *(-w).tolist()]]
        bounds = [(0, 1 - ti) for ti in t] + [(0, ti) for ti in t]
    result = optimize.linprog(
        cost, A_ub=a_ub, b_ub=None if a_ub is None else [0.0] * len(a_ub), A_eq=a_eq,
        b_eq=[float(b) - float((w * t).sum())], bounds=bounds, method="highs",
    )  # fmt: skip
    assert result.status == 0
    return result.fun


def _minimal_l2_by_bisection(t, w, b):
    """The KKT point d_i = clip(λ·w_i, box) of min ‖d‖₂ with ⟨w, t + d⟩ = b, λ by bisection."""
    t, w = t.double(), w.double()
    target = float(b) - float((w * t).sum())
    lo_box, hi_box = -t, 1 - t

    def step(lam):
        return (lam * w).clamp(lo_box, hi_box)

    lo, hi = -1e6, 1e6  # ⟨w, clip(λw)⟩ increases with λ
    for _ in range(300):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((w * step(mid)).sum()) < target else (lo, mid)
    return step((lo + hi) / 2)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_hyperplane_projection_is_the_minimal_norm_step_inside_the_box(norm):
    """FAB §3.1: the step FAB takes is the minimal-norm one onto the hyperplane ∩ box."""
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for case in range(30):
        d = [3, 8, 40][case % 3]
        t = torch.rand(1, d, generator=gen)
        t[torch.rand(t.shape, generator=gen) < 0.2] = 1.0
        w = torch.randn(1, d, generator=gen)
        w[torch.rand(w.shape, generator=gen) < 0.15] = 0.0  # flat coordinates do not move
        # a hyperplane through a random point of the box: the problem is feasible
        b = (w * torch.rand(1, d, generator=gen)).sum(1)
        step = A.project_hyperplane_box(norm, t, w, b)
        assert float((w * (t + step)).sum()) == pytest.approx(float(b), abs=1e-4)
        assert ((t + step) >= -1e-6).all() and ((t + step) <= 1 + 1e-6).all()
        assert (step[w == 0] == 0).all()
        if norm == "l2":
            assert torch.allclose(step.double(), _minimal_l2_by_bisection(t[0], w[0], b), atol=1e-4)
        else:
            size = step.abs().amax() if norm == "linf" else step.abs().sum()
            assert float(size) == pytest.approx(_minimal_norm_by_lp(norm, t[0], w[0], b), abs=1e-4)
        checked += 1
    assert checked == 30


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_a_hyperplane_the_box_cannot_reach_sends_every_coordinate_to_its_bound(norm):
    t = torch.tensor([[0.2, 0.7, 0.5]])
    w = torch.tensor([[1.0, -2.0, 0.0]])
    b = torch.tensor([10.0])  # ⟨w, z⟩ ≤ 1 on the box
    step = A.project_hyperplane_box(norm, t, w, b)
    assert torch.allclose(t + step, torch.tensor([[1.0, 0.0, 0.5]]))


# ------------------------------------------------------------------ FAB
class _Affine(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x):
        return x.flatten(1) @ self.weight.t() + self.bias


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_finds_the_closest_point_of_a_linear_decision_boundary(norm):
    """For an affine classifier the distance to the boundary of class k is |f_k − f_y| /
    ‖w_k − w_y‖_dual (FAB eq. 4 is then exact); FAB must land just past the nearest one."""
    gen = torch.Generator().manual_seed(1)
    d, classes = 20, 4
    weight = torch.randn(classes, d, generator=gen)
    model = _Affine(weight, -0.5 * weight.sum(1)).eval()  # logits W(x − 1/2)
    # images near the middle of the box, so the box never binds at these distances
    x = 0.5 + 0.05 * torch.randn(16, d, generator=gen)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    dual = {"linf": 1, "l2": 2, "l1": math.inf}[norm]
    w = model.weight.detach()
    gaps = (logits.gather(1, y[:, None]) - logits).abs()
    norms = (w[None] - w[y][:, None]).norm(p=dual, dim=2)
    closest = (gaps / norms).scatter(1, y[:, None], math.inf).amin(1)
    assert (closest < 0.2).all()  # no coordinate needs to move past the box
    eps = 1.0 if norm == "linf" else 10.0  # every point falls: FAB returns its closest one
    fab = A.FAB(norm, eps, steps=100, early_stop=False)
    result = fab.run(model, x, y)
    assert result.success.all()
    found = A.ThreatModel(norm, eps).distance(result.x_adv, x)
    assert (found >= closest * (1 - 1e-4)).all()  # nothing closer exists
    assert (found <= closest * 1.05).all()  # FAB converges to within a few % of it


def test_fab_t_attacks_the_second_to_tenth_most_likely_classes_in_turn():
    gen = torch.Generator().manual_seed(2)
    model = _Affine(torch.randn(10, 12, generator=gen), torch.zeros(10)).eval()
    x = torch.rand(8, 12, generator=gen)
    y = model(x).argmax(1)
    attack = A.FABT("l2", 0.05, steps=5)
    assert attack.targets == 9 and attack.restarts == 1
    calls = []

    class Spy(nn.Module):
        def forward(self, z):
            calls.append(z.shape[0])
            return model(z)

    attack.run(Spy(), x, y)
    assert max(calls) == 8  # batched: never one image at a time
    assert A.FAB("l2", 0.05, steps=5, targets=9).budget() == 9 * (2 * 5 - 1 + 1) + 1


def test_early_stop_leaves_fabs_verdict_unchanged_and_saves_calls():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    x = torch.rand(40, 12, generator=gen)
    y = model(x).argmax(1)
    # over weight seeds 0-7 these radii fool 9-32 (linf), 10-34 (l2), 10-38 (l1) of the 40;
    # l1 at 1.0 fooled all 40 at seed 2
    for norm, eps in (("linf", 0.1), ("l2", 0.3), ("l1", 0.6)):
        fast = A.FABT(norm, eps, steps=20, targets=2).run(model, x, y)
        full = A.FABT(norm, eps, steps=20, targets=2, early_stop=False).run(model, x, y)
        assert torch.equal(fast.success, full.success), norm
        assert 0 < fast.success.sum() < 40, norm  # the case is not trivial
        assert fast.queries.sum() < full.queries.sum()


# ------------------------------------------------------------------ Square
@pytest.mark.parametrize(("size", "power"), [(3, 2), (6, 2), (7, 2), (5, 4), (11, 4)])
def test_square_pattern_is_the_double_pyramid_of_the_square_paper(size, power):
    """Pixel (i, j) of a half with centre (r, c) lies in rectangles k ≥ max(|i − r|, |j − c|),
    each weighing 1/(k + 1)^power; halves and whole normalised (L2 for power 2, L1 for 4)."""

    def unit(t):
        return t / (t.norm() if power == 2 else t.abs().sum())

    def half(rows):
        r, c = rows // 2, size // 2
        k_max = max(r, c)
        cells = [
            [sum(1 / (k + 1) ** power for k in range(max(abs(i - r), abs(j - c)), k_max + 1))
             for j in range(size)]
            for i in range(rows)
        ]  # fmt: skip
        return unit(torch.tensor(cells, dtype=torch.float64))

    expected = unit(torch.cat([half(size // 2), -half(size - size // 2)]))
    assert torch.allclose(square_pattern(size, power).double(), expected, atol=1e-6)


def test_square_schedule_autoattacks_counts_iterations_the_rescaled_one_scales_them():
    """AutoAttack builds Square without rescaling: at 5000 queries p ends at p_init/128."""
    p0 = 0.8
    assert square_fraction(p0, 10, 5000) == p0
    assert square_fraction(p0, 11, 5000) == p0 / 2
    assert square_fraction(p0, 4999, 5000) == p0 / 128
    assert square_fraction(p0, 4999, 5000, rescale=True) == p0 / 512
    assert square_fraction(p0, 4, 1000, rescale=True) == p0 / 2  # 4/1000·10 000 = 40 ∈ (10, 50]
    assert A.Square(schedule="autoattack").schedule == A.create_attack("square").schedule


# ------------------------------------------------------------------ APGD-L1
def test_apgd_l1_large_eps_schedule_is_autoattacks_30_30_40():
    assert large_eps_schedule(100) == [(3.0, 30), (2.0, 30), (1.0, 40)]
    attack = A.APGDCE("l1", 12.0, steps=100, large_eps=True)
    assert attack.evaluations_per_run() == 103
    with pytest.raises(A.AttackInputError, match="L1"):
        A.APGDCE("linf", 0.03, large_eps=True)


def test_apgd_l1_breaks_more_than_plain_pgd_l1():
    """The sparse step is what makes L1 attacks work: PGD's steepest-ascent step (one pixel) is
    weak, l1-APGD (Mind the box) is not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    x = torch.rand(48, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    apgd = A.APGDCE("l1", 1.5, steps=30).run(model, x, y)
    pgd = A.PGD("l1", 1.5, steps=30, step_size=0.5).run(model, x, y)
    assert apgd.robust_accuracy < pgd.robust_accuracy - 0.1


# ------------------------------------------------------------------ randomised models
class _Noisy(nn.Module):
    """A small CNN behind Gaussian input noise (global RNG), as randomised defenses draw."""

    def __init__(self, sigma: float = 0.05) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.net = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(24, 5),
        )  # fmt: skip
        self.sigma = sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


def test_randomness_check_flags_noise_and_nothing_else():
    x = torch.rand(20, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    noisy = _Noisy()
    assert A.check_randomness(noisy, x).random
    quiet = _Noisy(sigma=0.0)
    quiet.net.insert(1, nn.Dropout(0.5))  # dropout is off in eval mode
    check = A.check_randomness(quiet, x)
    assert not check.random and check.max_difference == 0.0
    state = torch.get_rng_state()
    A.check_randomness(noisy, x)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone


def test_eot_on_a_randomised_model_is_reproducible_and_counts_every_pass():
    model = _Noisy().eval()
    x = torch.rand(10, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model.net(x).argmax(1)  # the noise-free prediction: most points start correct
    state = torch.get_rng_state()
    make = [
        lambda s: A.EOT(A.APGDCE("linf", 0.05, steps=5, seed=s), iterations=4),
        lambda s: A.PGD("l2", 0.5, steps=4, eot_iter=3, seed=s),
        lambda s: A.EOT(A.FABT("l1", 2.0, steps=3, targets=2, seed=s), iterations=2),
    ]
    for build in make:
        a, b, c = build(1).run(model, x, y), build(1).run(model, x, y), build(2).run(model, x, y)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
        assert not torch.equal(a.x_adv, c.x_adv)
    assert torch.equal(torch.get_rng_state(), state)
    attack = A.EOT(A.APGDCE("linf", 0.05, steps=5), iterations=4)
    assert attack.budget() == (5 + 1) * 4
    assert attack.attack.early_stop is False
    result = attack.run(model, x, y)
    clean = int(result.clean_correct.sum())
    assert int(result.queries.sum()) == clean * attack.budget()  # no early stop under EOT
    with pytest.raises(A.AttackInputError, match="gradient attack"):
        A.EOT(A.Square(0.05), iterations=2)


class _Scripted(nn.Module):
    """Correct on the 1st and 3rd call, wrong on the 2nd: a randomised model's passes, fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        logits = torch.zeros(x.shape[0], 3)
        logits[:, 1 if self.calls == 2 else 0] = 1.0
        return logits


class _Nothing(A.Attack):
    name = "nothing"

    def budget(self):
        return 0

    def _attack(self, oracle, x, y, generator, trace):
        return x, None, {}


def test_an_ensemble_judges_a_randomised_model_as_autoattacks_rand_version():
    """Clean pass (correct), the member's own clean pass (wrong: it does not attack), the
    verdict pass on the returned image (correct): robust, as AutoAttack counts it."""
    x, y = torch.rand(2, 3), torch.zeros(2, dtype=torch.long)
    member = _Nothing(A.ThreatModel("linf", 0.1))
    alone = member.run(_Scripted(), x, y)
    assert alone.success.all()  # alone, its clean pass was wrong: not robust
    ensemble = A.AttackEnsemble([member]).run(_Scripted(), x, y)
    assert ensemble.robust.all()


# ------------------------------------------------------------------ versions
def test_autoattack_versions_are_autoattacks_compositions():
    def members(**options):
        return [(a.name, a) for a in A.create_attack("autoattack", **options).attacks]

    standard = members()
    assert [n for n, _ in standard] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    apgd, apgdt, fabt, square = (a for _, a in standard)
    assert (apgd.steps, apgd.restarts, apgd.threat.eps) == (100, 1, 8 / 255)
    assert (apgdt.targets, apgdt.restarts, fabt.targets, fabt.restarts) == (9, 1, 9, 1)
    assert (fabt.steps, fabt.alpha_max, fabt.eta, fabt.beta) == (100, 0.1, 1.05, 0.9)
    assert (square.queries, square.p_init, square.schedule) == (5000, 0.8, "autoattack")
    l1 = members(norm="l1")
    assert [a.threat.eps for _, a in l1] == [12.0] * 4
    assert (l1[0][1].restarts, l1[0][1].large_eps, l1[1][1].targets, l1[1][1].large_eps) == (
        5, True, 5, True,
    )  # fmt: skip
    assert members(norm="l2")[0][1].threat.eps == 0.5
    plus = members(version="plus")
    assert [n for n, _ in plus] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert (plus[0][1].restarts, plus[1][1].restarts, plus[2][1].restarts) == (5, 5, 5)
    assert (plus[4][1].targets, plus[5][1].targets, plus[5][1].restarts) == (9, 9, 1)
    rand = members(version="rand")
    assert [n for n, _ in rand] == ["apgd-ce+eot20", "apgd-dlr+eot20"]
    assert all(a.attack.eot_iter == 20 and a.attack.restarts == 1 for _, a in rand)
    custom = members(version="custom", attacks="square+apgd-ce")
    assert [n for n, _ in custom] == ["square", "apgd-ce"]
    assert A.create_attack("standard").describe() == A.create_attack("autoattack").describe()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"version": "fast"}, "unknown AutoAttack version"),
        ({"norm": "l3"}, "unknown norm"),
        ({"version": "custom"}, "version=custom needs attacks="),
        ({"version": "custom", "attacks": "apgd-ce+pgd"}, "unknown: pgd"),
        ({"attacks": "square"}, "attacks= is for version=custom"),
    ],
)
def test_bad_autoattack_options_are_one_clear_line(options, message):
    with pytest.raises(ValueError) as info:
        A.create_attack("autoattack", **options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_report_says_which_version_ran_and_flags_a_randomised_model():
    model = _Noisy().eval()
    x = torch.rand(12, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(4))
    small = {"steps": 3, "queries": 5, "eot_iter": 2, "eps": 0.05}
    standard = A.create_attack("autoattack", **small).run(model, x, y)
    report = A.ensemble_report(standard, title="autoattack")
    assert "AutoAttack standard version" in report
    assert "seems randomised" in report and "version=rand" in report
    rand = A.create_attack("autoattack", version="rand", **small).run(model, x, y)
    report = A.ensemble_report(rand, title="autoattack")
    assert "AutoAttack rand version" in report and "one stochastic forward pass" in report
    assert "budget changed from AutoAttack's" in report
    assert rand.extra["version"] == "rand"


def test_suite_autoattack_picks_the_rand_version_for_a_randomised_model():
    noisy, quiet = _Noisy().eval(), _Noisy(sigma=0.0).eval()
    assert [s.id for s in resolve_attacks("autoattack", None, noisy)] == [AUTOATTACK_RAND]
    assert [s.id for s in resolve_attacks("autoattack", None, quiet)] == ["autoattack"]
    assert [s.id for s in resolve_attacks("autoattack", None, None)] == ["autoattack"]
    spec = resolve_attacks("autoattack", None, noisy)[0]
    assert any("rand version" in note for note in spec.create().notes)


def test_the_global_rng_seeds_the_models_noise_per_attack_run():
    model = _Noisy()
    x = torch.rand(4, 3, 6, 6)
    with A.seeded_model_rng(3, x.device):
        first = model(x)
    with A.seeded_model_rng(3, x.device):
        again = model(x)
    with A.seeded_model_rng(4, x.device):
        other = model(x)
    assert torch.equal(first, again) and not torch.equal(first, other)
