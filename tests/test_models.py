"""The model registry: published parameter counts, shapes, gradients, seeds, options, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustode.models import ModelConfigError, create_model, list_models
from robustode.nn import SkewConvODE, SkewLinearODE

ALL_MODELS = list_models()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize(
    ("name", "options", "published", "tolerance"),
    [
        ("sonet", {"width": 64}, 5.94e6, 0.005),  # reference code's sonet(), docs/references.md
        ("resnet10", {"width": 64}, 4.90e6, 0.005),  # docs/references.md
        ("preact_resnet56", {}, 0.85e6, 0.02),  # LAD backbone, docs/references.md
        ("wrn34_10", {}, 46.2e6, 0.01),  # TRADES' WRN-34-10
    ],
)
def test_parameter_counts_match_the_published_ones(name, options, published, tolerance):
    count = n_params(create_model(name, **options))
    assert abs(count - published) <= tolerance * published, f"{name}: {count:,}"


def test_parameter_counts_of_the_variants():
    # The ODE stem 3→w costs w·3·9 kernel weights plus four GroupNorms, the BN'd conv stem
    # w·3·9 plus one BN: the two differ only by the norms.
    base, ode = n_params(create_model("resnet10")), n_params(create_model("soblock"))
    assert ode - base == 2 * (3 + 64) * 2 - 2 * 64
    # one learnable k per damped block: 27 blocks, minus the first and the 2 downsampling ones
    plain = n_params(create_model("preact_resnet56"))
    assert n_params(create_model("inresnet56")) - plain == 24
    assert n_params(create_model("lambda_inresnet56")) - plain == 24
    # the SONet reference's WRN block has a bias on every conv: Σ out_channels more
    trades = n_params(create_model("wrn34_10"))
    reference = n_params(create_model("wrn34_10", block_style="sonet_reference"))
    assert reference - trades == sum(5 * 2 * c + c for c in (160, 320, 640))
    # the paper's SONet (one ODE block per stage) vs the reference code's (two)
    assert n_params(create_model("sonet", blocks_per_stage=1)) == 2_802_902


def _skew_conv_params(c_in: int, c_out: int, k: int) -> int:
    """One skew conv ODE block: one shared k×k kernel W (c_out·c_in·k²; −Wᵀ reuses it, no
    bias) and four affine GroupNorms (x in/out on c_in, z in/out on c_out: 2 per channel)."""
    return c_out * c_in * k * k + 2 * (2 * c_in + 2 * c_out)


def _sonet_params(w: int, classes: int, blocks: int, k_down: int, c_in: int = 3) -> int:
    """SONet §4 / Fig. 2 from its layer shapes: stem c_in→w (3×3), stages w·[1, 2, 4, 8]
    (first block of stages 2–4 stride 2 with k_down×k_down, the rest 3×3 C→C), classifier
    W (8w × classes) with biases b_z (classes) and b_x (8w)."""
    count = _skew_conv_params(c_in, w, 3)
    channels = w
    for stage, mult in enumerate((1, 2, 4, 8)):
        width = w * mult
        for index in range(blocks):
            k = k_down if stage > 0 and index == 0 else 3
            count += _skew_conv_params(channels, width, k)
            channels = width
    return count + channels * classes + classes + channels


@pytest.mark.parametrize("width", [64, 32])
def test_sonet_parameter_counts_from_the_layer_shapes(width):
    """The reference code's SONet (5.94 M at w 64, the published figure) and the paper text's
    (one block per stage, 3×3 stride-2 kernels; the classifier placement and z(0) add no
    parameters), each against the count derived from its layer shapes."""
    reference = n_params(create_model("sonet", width=width))
    text = n_params(create_model("sonet_paper_text", width=width))
    assert reference == _sonet_params(width, 10, blocks=2, k_down=4)
    assert text == _sonet_params(width, 10, blocks=1, k_down=3)
    if width == 64:
        assert (reference, text) == (5_944_022, 1_598_678)
    # the options compose: sonet with the text's options is the same network
    same = create_model(
        "sonet",
        width=width,
        blocks_per_stage=1,
        downsample_kernel=3,
        activation_placement="after",
        classifier_z0=1.0,
        seed=0,
    )
    twin = create_model("sonet_paper_text", width=width, seed=0)
    weights, twin_weights = same.state_dict(), twin.state_dict()
    assert list(weights) == list(twin_weights)
    assert all(torch.equal(weights[k], twin_weights[k]) for k in weights)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same(x), twin(x))


def test_sonet_paper_text_is_the_text_not_the_code():
    model = create_model("sonet_paper_text", width=8)
    blocks = dict(model.named_ode_blocks())
    stages = [n for n in blocks if n.startswith("layer")]
    assert stages == [f"layer{s}.0.block" for s in range(1, 5)]  # one block per stage
    assert {blocks[f"layer{s}.0.block"].field.kernel_size for s in (2, 3, 4)} == {3}
    assert model.classifier.field.placement == "after" and model.classifier.z0 == 1.0
    assert model.model_config["downsample_kernel"] == 3
    reference = create_model("sonet", width=8)
    assert dict(reference.named_ode_blocks())["layer2.0.block"].field.kernel_size == 4
    assert reference.classifier.field.placement == "before" and reference.classifier.z0 == 0.1


# ------------------------------------------------------------------ shapes, gradients, seeds
# full-size models on 32×32 images that take 5–20 s on 2 cores (the --fast tier leaves them out)
SLOW_ON_CIFAR = {"odenet", "inresnet56", "lambda_inresnet56", "wrn34_10_soblock"}
SHAPES = [
    pytest.param(
        name,
        shape,
        num_classes,
        id=f"{kind}-{name}",
        marks=[pytest.mark.slow] if kind == "cifar" and name in SLOW_ON_CIFAR else [],
    )
    for kind, shape, num_classes in [("cifar", (2, 3, 32, 32), 10), ("digits", (3, 1, 8, 8), 100)]
    for name in ALL_MODELS
]


@pytest.mark.parametrize(("name", "shape", "num_classes"), SHAPES)
def test_forward_gives_logits_and_backward_reaches_the_input(name, shape, num_classes):
    model = create_model(name, in_channels=shape[1], num_classes=num_classes, seed=0)
    x = torch.rand(shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (shape[0], num_classes)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.arange(shape[0]) % num_classes).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all(), "every image gets a gradient"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_the_same_seed_gives_the_same_weights(name):
    options = {"widen_factor": 1} if name.startswith("wrn") else {}
    torch.manual_seed(123)
    state_before = torch.random.get_rng_state()
    a = create_model(name, seed=7, **options).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state_before), "caller's RNG untouched"
    b = create_model(name, seed=7, **options).state_dict()
    c = create_model(name, seed=8, **options).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_model_config_rebuilds_the_same_model():
    model = create_model("sonet", width=8, seed=3, method="rk4", step_size=0.5, gamma=0.1)
    config = dict(model.model_config)
    assert config["name"] == "sonet" and config["width"] == 8 and config["method"] == "rk4"
    assert config["seed"] == 3
    again = create_model(**config)  # the name travels in the config too
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model(x), again(x))


def test_model_config_follows_set_solver_and_not_the_callers_objects():
    stats = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    model = create_model("soblock", width=8, seed=0, normalize=stats)
    stats["mean"].append(1.0)
    model.set_solver(method="rk4", step_size=0.5)
    config = dict(model.model_config)
    assert config["normalize"]["mean"] == [0.5, 0.5, 0.5]
    (stem,) = create_model(config.pop("name"), **config).ode_blocks()
    assert stem.solver == next(model.ode_blocks()).solver
    model.set_solver(method="bosh3", step_size=None, tol=1e-2)
    config = dict(model.model_config)
    (stem,) = create_model(config.pop("name"), **config).ode_blocks()
    assert (stem.solver.method, stem.solver.rtol, stem.solver.atol) == ("bosh3", 1e-2, 1e-2)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet11", {}, "unknown model 'resnet11'; choose one of: inresnet56,"),
        ("resnet10", {"method": "rk4"}, "model 'resnet10' has no option(s) method; it accepts:"),
        ("sonet", {"widht": 32}, "has no option(s) widht; it accepts: num_classes, in_channels"),
        ("odenet", {"gamma": 0.1}, "model 'odenet' has no option(s) gamma"),
        ("soblock", {"method": "rk45"}, "unknown ODE method 'rk45'; choose one of:"),
        ("soblock", {"tol": -1.0}, "tol must be a number > 0, got -1.0"),
        ("soblock", {"step_size": "big"}, "step_size must be a number > 0, got 'big'"),
        ("sonet", {"gamma": "0.1"}, "gamma must be a number ≥ 0, got '0.1'"),
        ("soblock", {"step_control": "per_image"}, "unknown step_control 'per_image'"),
        ("soblock", {"step_size": 0.5}, "step_size is for the fixed-step methods (euler, midpoint"),
        (
            "soblock",
            {"backend": "torchdiffeq", "step_control": "per_sample"},
            "backend 'torchdiffeq' has only torchdiffeq's batch-shared step control",
        ),
        ("soblock", {"activation": ["tanh"]}, "unknown activation ['tanh']; choose one of"),
        ("soblock", {"seed": "1"}, "seed must be an integer"),
        ("resnet10", {"normalize": {"mean": [0, 0, 0], "std": [1, "a", 1]}}, "std > 0"),
        ("soblock", {"z0": "ones"}, "unknown z0 'ones'"),
        ("sonet", {"activation_placement": "middle"}, "unknown activation placement"),
        ("resnet10", {"width": 0}, "width must be an integer ≥ 1"),
        ("resnet10", {"num_classes": 1}, "num_classes must be an integer ≥ 2"),
        ("resnet10", {"in_channels": 2.5}, "in_channels must be an integer ≥ 1"),
        ("wrn34_10", {"depth": 33}, "depth must be 6n + 4"),
        ("wrn34_10", {"block_style": "meliketoy"}, "unknown block_style 'meliketoy'"),
        ("preact_resnet56", {"depth": 57}, "depth must be 6n + 2"),
        ("resnet10", {"normalize": "imagenet"}, "unknown normalize 'imagenet'"),
        ("resnet10", {"in_channels": 1, "normalize": "cifar10"}, "3 channel statistics"),
    ],
)
def test_bad_names_and_options_get_one_clear_error(name, options, message):
    with pytest.raises(ModelConfigError) as err:
        create_model(name, **options)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ ODE options reach every block
def test_every_ode_option_reaches_every_ode_block():
    model = create_model(
        "sonet",
        width=8,
        method="bosh3",
        tol=1e-2,
        step_control="per_sample",
        detach_step_size=True,
        adjoint=True,
        gamma=0.2,
        z0="zeros",
        activation="tanh",
        norm=None,
        classifier_z0=1.0,
        activation_placement="after",
    )
    blocks = list(model.ode_blocks())
    assert len(blocks) == 1 + 4 * 2 + 1
    for block in blocks:
        s = block.solver
        assert (s.method, s.rtol, s.atol, s.step_control) == ("bosh3", 1e-2, 1e-2, "per_sample")
        assert s.detach_step_size is True and s.adjoint is True
        assert block.field.gamma == 0.2
    convs = [b for b in blocks if isinstance(b, SkewConvODE)]
    assert all(b.z0 == "zeros" and b.field.activation_name == "tanh" for b in convs)
    assert all(isinstance(b.field.norm_x_in, torch.nn.Identity) for b in convs)
    (head,) = [b for b in blocks if isinstance(b, SkewLinearODE)]
    assert head.z0 == 1.0 and head.field.placement == "after"
    model(torch.rand(2, 3, 16, 16))
    assert all(b.last_record is not None and b.nfe > 0 for b in blocks)
    assert model.nfe == sum(b.nfe for b in blocks)


@pytest.mark.parametrize(
    ("name", "options", "n_blocks"),
    [
        ("soblock", {"width": 8}, 1),
        ("wrn34_10_soblock", {"depth": 10, "widen_factor": 1}, 1),
        ("odenet", {"width": 8, "num_blocks": 3}, 3),
    ],
)
def test_solver_options_reach_the_ode_blocks_of_every_ode_model(name, options, n_blocks):
    solver = {"method": "adaptive_heun", "rtol": 0.05, "atol": 0.02, "max_num_steps": 77}
    model = create_model(name, **options, **solver, step_control="per_sample", t1=0.5)
    blocks = list(model.ode_blocks())
    assert len(blocks) == n_blocks
    for block in blocks:
        s = block.solver
        assert (s.method, s.rtol, s.atol, s.max_num_steps) == ("adaptive_heun", 0.05, 0.02, 77)
        assert (s.step_control, s.t1) == ("per_sample", 0.5)
    if name != "odenet":
        model = create_model(name, **options, gamma=0.3, z0="zeros", activation="tanh")
        (stem,) = model.ode_blocks()
        assert (stem.field.gamma, stem.z0, stem.field.activation_name) == (0.3, "zeros", "tanh")


@pytest.mark.parametrize(
    ("options", "starts", "nfe"),
    [
        ({"method": "euler", "step_size": 0.25}, [0.0, 0.25, 0.5, 0.75], 4),
        ({"method": "rk4", "step_size": 0.5}, [0.0, 0.5], 8),
    ],
)
def test_method_changes_the_solver_the_stem_actually_uses(options, starts, nfe):
    model = create_model("soblock", width=8, seed=0, **options).eval()
    (stem,) = model.ode_blocks()
    with torch.no_grad():
        model(torch.rand(2, 3, 8, 8))
    record = stem.last_record
    step = options["step_size"]
    assert [t for t, _ in record.accepted_steps()] == pytest.approx(starts)
    assert [dt for _, dt in record.accepted_steps()] == pytest.approx([step] * len(starts))
    assert record.num_rejected == 0 and record.nfe_forward == nfe


def test_the_default_stem_is_adaptive_dopri5_and_set_solver_swaps_it():
    model = create_model("soblock", width=8, seed=0).eval()
    (stem,) = model.ode_blocks()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        model(x)
    # dopri5: 6 evaluations per step (FSAL) plus the 2 of the automatic first step
    assert stem.last_record.nfe_forward == 6 * stem.last_record.num_steps + 2
    model.set_solver(method="euler", step_size=0.5)
    with torch.no_grad():
        model(x)
    assert stem.last_record.nfe_forward == 2
    with pytest.raises(ValueError, match="has no ODE blocks"):
        create_model("resnet10", width=8).set_solver(method="rk4")


def test_per_sample_step_control_makes_logits_independent_of_batch_mates():
    torch.manual_seed(0)
    x, mates = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    mixed = torch.cat([x[:2], mates[2:]])
    gaps = {}
    for control in ("batch", "per_sample"):
        model = create_model("soblock", width=16, seed=0, step_control=control).eval()
        with torch.no_grad():
            gaps[control] = max(
                float((model(x)[:2] - model(mixed)[:2]).abs().max()),
                float((model(x)[:1] - model(x[:1])).abs().max()),
            )
    assert gaps["per_sample"] <= 1e-6
    # the contrast that makes the check meaningful: a shared step size couples the batch
    assert gaps["batch"] > 10 * max(gaps["per_sample"], 1e-7)


# ------------------------------------------------------------------ normalisation
def test_normalisation_lives_inside_the_model():
    x = torch.rand(2, 3, 32, 32)
    plain = create_model("resnet10", width=8, seed=1).eval()
    normed = create_model("resnet10", width=8, seed=1, normalize="cifar10").eval()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    torch.testing.assert_close(normed(x), plain((x - mean) / std))
    custom = create_model("resnet10", width=8, in_channels=1, normalize={"mean": [0.5], "std": [2]})
    assert custom.eval()(torch.rand(1, 1, 8, 8)).shape == (1, 10)
    assert "normalize.mean" not in custom.state_dict()


# ------------------------------------------------------------------ damping
@pytest.mark.parametrize(
    ("name", "k_low", "k_high", "lam_of_k"),
    [("inresnet56", 0.75, 0.8, lambda k: 1 - k), ("lambda_inresnet56", 0.2, 0.25, lambda k: k)],
)
def test_damping_starts_from_the_published_initialisation(name, k_low, k_high, lam_of_k):
    model = create_model(name, seed=0)
    lambdas = model.damping_lambdas()
    assert len(lambdas) == 24
    assert not {"layer1.0", "layer2.0", "layer3.0"} & set(lambdas)
    for block_name, lam in lambdas.items():
        stage, index = block_name.split(".")
        k = getattr(model, stage)[int(index)].join.k.item()
        assert k_low <= k <= k_high and lam == pytest.approx(lam_of_k(k))


def test_damped_block_computes_the_in_resnet_update():
    torch.manual_seed(0)
    for name in ("inresnet56", "lambda_inresnet56"):
        block = create_model(name, seed=0).layer2[3].eval()
        x = torch.randn(2, 32, 8, 8)
        f = block.conv2(F.relu(block.bn2(block.conv1(F.relu(block.bn1(x))))))
        lam = block.join.lam.item()
        expected = f + (1 - lam) * x if name == "inresnet56" else (1 + lam) * f + (1 - lam) * x
        torch.testing.assert_close(block(x), expected)
