"""The fast vector fields compute the reference fields' function (issue 21).

Each field's ``reference=True`` implementation — today's plain composition of
PyTorch modules — is the peer: outputs, gradients to both states and to every
parameter, and whole ODE solves (NFE, step grid, output) are compared for every
block kind the models use (stem 3→C, stage C→C, stride-2 C→2C with even and odd
sizes) and every option (γ, norm, activation, skew, z(0), classifier placement
and bias), in float64 and float32.

Bounds, relative to the largest magnitude of the quantity compared:

- float64: 1e-12 — the two are the same function; what is left is the rounding
  of another summation order (≈1e-15).
- float32: 3e-6 for outputs and state gradients, 2e-5 for parameter gradients
  (sums over the batch and every pixel). The reference itself is only that close
  to the exact value: in float32 it is 2–5e-6 away from its float64 self, and a
  channels-last convolution or GroupNorm sums in another order.
  ``test_float32_fast_field_is_as_accurate_as_the_reference`` checks against the
  float64 value that nothing beyond that rounding is lost.
"""

from __future__ import annotations

import copy

import pytest
import torch

from robustode.models import create_model
from robustode.nn import (
    ConcatConv2d,
    NeuralODEBlock,
    NeuralODEField,
    SkewConvField,
    SkewConvODE,
    SkewLinearField,
    SkewLinearODE,
    set_reference_fields,
)
from robustode.nn.layout import CHANNELS_LAST, CONTIGUOUS, in_layout, normalize

F64, F32 = torch.float64, torch.float32
# (c_in, c_out, stride, size): the block kinds of SOBlock/SONet, at sizes that take
# every layout the fast field chooses (tests/test_fast_fields.py::test_layouts...).
SHAPES = [
    (3, 16, 1, 32),  # stem: the 3-channel image state stays NCHW, z is NHWC
    (16, 16, 1, 32),  # stage at 32×32: NHWC
    (16, 32, 2, 32),  # stride-2 4×4: NHWC
    (16, 32, 2, 9),  # odd size: the transposed convolution's output_padding
    (32, 32, 1, 4),  # 4×4 stage: NCHW
]
OPTIONS = [
    {},
    {"gamma": 0.2},
    {"norm": None},
    {"activation": "tanh"},
    {"activation": "identity"},
    {"activation": "relu"},
    {"skew": False},
    {"gamma": 0.3, "norm": None, "activation": "tanh", "skew": False},
]
BOUNDS = {F64: (1e-12, 1e-12), F32: (3e-6, 2e-5)}  # (states, parameters)


def _worst(a, b, common_scale: bool = False) -> float:
    """max |a − b| / max |b| over pairs of tensors; with ``common_scale`` the divisor is the
    largest |b| of all of them (parameter gradients: some are exactly 0 in exact arithmetic —
    a GroupNorm bias whose shift the next GroupNorm removes — and only rounding remains)."""
    a = [u.detach().double() for u in a]
    b = [v.detach().double() for v in b]
    scales = [v.abs().max() for v in b]
    if common_scale:
        scales = [max(scales)] * len(b)
    return max(
        float((u - v).abs().max() / s.clamp_min(1e-300))
        for u, v, s in zip(a, b, scales, strict=True)
    )


def _reference(module):
    ref = copy.deepcopy(module)
    assert set_reference_fields(ref) >= 1
    return ref


def _field_pass(field, state, cotangents):
    """Outputs and gradients (to the states, then to every parameter) of one evaluation."""
    state = tuple(v.detach().requires_grad_() for v in state)
    out = field(torch.zeros((), dtype=state[0].dtype), state)
    out = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad(out, [*state, *field.parameters()], cotangents)
    return out, grads[: len(state)], grads[len(state) :]


def _compare_fields(fast, state, dtype):
    ref = _reference(fast)
    cotangents = _cotangents(ref, state)
    out_ref, gs_ref, gp_ref = _field_pass(ref, state, cotangents)
    out, gs, gp = _field_pass(fast, state, cotangents)
    states, params = BOUNDS[dtype]
    assert _worst(out, out_ref) <= states
    assert _worst(gs, gs_ref) <= states
    assert _worst(gp, gp_ref, common_scale=True) <= params


def _cotangents(field, state):
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        out = field(torch.zeros((), dtype=state[0].dtype), state)
    out = out if isinstance(out, tuple) else (out,)
    return [torch.randn(v.shape, generator=gen, dtype=v.dtype) for v in out]


def _conv_state(field: SkewConvField, c_in, c_out, size, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, size, size, generator=gen, dtype=dtype)
    z = torch.randn(field.z_shape(x.shape, c_out), generator=gen, dtype=dtype)
    return x, z


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults"
)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}to{}_s{}_{}px".format(*s))
def test_fast_conv_field_equals_the_reference(shape, options, dtype):
    c_in, c_out, stride, size = shape
    torch.manual_seed(0)
    field = SkewConvField(c_in, c_out, stride, **options).to(dtype)
    _perturb_norms(field)
    _compare_fields(field, _conv_state(field, c_in, c_out, size, dtype), dtype)


# The 3×3 stride-2 block of the paper's text (sonet_paper_text): an even size (the
# transposed convolution's output_padding 1), an odd one (0), 8×8 NHWC and 4×4 NCHW.
KERNEL3_SHAPES = [(16, 32, 2, 32), (16, 32, 2, 9), (16, 32, 2, 8), (32, 64, 2, 4)]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults"
)
@pytest.mark.parametrize("shape", KERNEL3_SHAPES, ids=lambda s: "{}to{}_s{}_{}px".format(*s))
def test_fast_3x3_stride_2_field_equals_the_reference(shape, options, dtype):
    c_in, c_out, stride, size = shape
    torch.manual_seed(0)
    field = SkewConvField(c_in, c_out, stride, kernel_size=3, **options).to(dtype)
    assert field.weight.shape[-2:] == (3, 3)
    _perturb_norms(field)
    x, z = _conv_state(field, c_in, c_out, size, dtype)
    assert z.shape[-1] == (size + 1) // 2  # ⌈H/2⌉: a 3×3 kernel, padding 1, stride 2
    _compare_fields(field, (x, z), dtype)


def _perturb_norms(module):
    """GroupNorm starts at γ = 1, β = 0; move it off so its gradients are checked for real."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.add_(
                    0.3 * torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype)
                )
                m.bias.add_(0.3 * torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))


def test_float32_fast_field_is_as_accurate_as_the_reference():
    """Against the float64 value, float32 fast and reference fields are off by rounding only."""
    for c_in, c_out, stride, size in SHAPES:
        torch.manual_seed(1)
        fast = SkewConvField(c_in, c_out, stride, gamma=0.1)
        _perturb_norms(fast)
        exact = _reference(fast).double()
        x, z = _conv_state(fast, c_in, c_out, size, F64, seed=1)
        cot = _cotangents(exact, (x, z))
        out64, gs64, gp64 = _field_pass(exact, (x, z), cot)
        f32 = [v.float() for v in cot]
        out, gs, gp = _field_pass(fast, (x.float(), z.float()), f32)
        out_r, gs_r, gp_r = _field_pass(_reference(fast), (x.float(), z.float()), f32)
        for fast_q, ref_q, exact_q in ((out, out_r, out64), (gs, gs_r, gs64), (gp, gp_r, gp64)):
            assert _worst(ref_q, exact_q, common_scale=True) <= 1e-5  # the reference's own rounding
            assert _worst(fast_q, exact_q, common_scale=True) <= 1e-5


LINEAR_OPTIONS = [
    {},
    {"placement": "after"},
    {"bias": False},
    {"skew": False},
    {"gamma": 0.2, "activation": "tanh"},
    {"placement": "after", "bias": False, "skew": False, "gamma": 0.1},
    {"bias": False, "activation": "identity"},
]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "options",
    LINEAR_OPTIONS,
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults",
)
def test_fast_linear_field_equals_the_reference(options, dtype):
    torch.manual_seed(0)
    field = SkewLinearField(64, 10, **options).to(dtype)
    gen = torch.Generator().manual_seed(0)
    state = (
        torch.randn(5, 64, generator=gen, dtype=dtype),
        torch.randn(5, 10, generator=gen, dtype=dtype),
    )
    _compare_fields(field, state, dtype)


class _Single(torch.nn.Module):
    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, t, state):
        return self.field(t, state[0])


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("size", [32, 4])
def test_fast_neural_ode_field_equals_the_reference(size, dtype):
    torch.manual_seed(0)
    field = NeuralODEField(16).to(dtype)
    _perturb_norms(field)
    x = torch.randn(2, 16, size, size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    _compare_fields(_Single(field), (x,), dtype)


@pytest.mark.parametrize("per_sample", [False, True])
def test_split_time_channel_convolution_equals_the_concatenated_one(per_sample):
    """conv([t·1, x]) = conv(x, W_x) + b + t·conv(1, W_t), with the gradient to t."""
    torch.manual_seed(0)
    conv = ConcatConv2d(5, 6).double()
    x = torch.randn(3, 5, 7, 7, dtype=F64, requires_grad=True)
    t = (torch.rand(3, dtype=F64) if per_sample else torch.tensor(0.7, dtype=F64)).requires_grad_()
    a, b = conv.forward_split(t, x), conv(t, x)
    assert _worst([a], [b]) <= 1e-12
    wrt = [t, x, *conv.parameters()]
    g = torch.randn_like(b)
    assert _worst(torch.autograd.grad(a, wrt, g), torch.autograd.grad(b, wrt, g)) <= 1e-12


def _solve_and_grads(block, x):
    x = x.detach().requires_grad_()
    out = block(x)
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(out.shape, generator=gen, dtype=F64).to(out.dtype)
    grads = torch.autograd.grad(out, [x, *block.parameters()], g)
    return out, grads, block.last_record


def _flat(steps):
    """(t0, dt) pairs of a record, per-sample lists flattened."""
    return [p for s in steps for p in (s if isinstance(s, list) else [s])]


def _assert_same_solve(fast, x, dtype):
    """Same NFE and grid, and the same output; in float64 the same gradients too.

    A solve's float32 gradients are not compared: they are ill-conditioned in rounding.
    Moving the input of the reference SOBlock stem (z(0) = 0) by one float32 rounding,
    x·(1 + 2⁻²²), moves its float32 input gradient by 2e-3 (its float64 one by 8e-7) —
    the first step's size is a difference quotient of nearly equal field values — so any
    other summation order gives another float32 gradient at that level. The float32
    gradients of single evaluations are compared above.
    """
    ref = _reference(fast)
    out_r, g_r, rec_r = _solve_and_grads(ref, x)
    out, g, rec = _solve_and_grads(fast, x)
    assert rec.nfe_forward == rec_r.nfe_forward and rec.num_steps == rec_r.num_steps
    grid_tol = 1e-12 if dtype == F64 else 1e-5
    for steps, steps_r in (
        (rec.accepted_steps(), rec_r.accepted_steps()),
        (rec.rejected_steps(), rec_r.rejected_steps()),
    ):
        assert len(steps) == len(steps_r)
        for (t0, dt), (t0_r, dt_r) in zip(_flat(steps), _flat(steps_r), strict=True):
            assert abs(t0 - t0_r) <= grid_tol and abs(dt - dt_r) <= grid_tol
    if dtype == F64:
        # a whole solve compounds the per-evaluation rounding: 10× the single-evaluation bound
        assert _worst([out], [out_r]) <= 1e-11
        assert _worst(g[:1], g_r[:1]) <= 1e-11
        assert _worst(g[1:], g_r[1:], common_scale=True) <= 1e-11
        return
    # float32: against the float64 solve, as close as the reference is, within the factor
    # GroupNorm's NHWC kernel costs (nn/layout.py: its variance is E[x²] − E[x]²; from
    # z(0) = 0 on uniform [0, 1] inputs the fast solve ends 6e-5 off, the reference 1e-5).
    with torch.no_grad():
        exact = _reference(fast).double()(x.double())
    assert exact.shape == out.shape and exact.dtype == F64
    assert _worst([out], [exact]) <= max(8 * _worst([out_r], [exact]), 3e-5)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("z0", ["channel_copy", "zeros"])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "{}to{}_s{}_{}px".format(*s))
def test_fast_block_takes_the_reference_steps(shape, z0, dtype):
    """dopri5 at tolerance 0.1 (the models' default): same NFE, same grid, same output."""
    c_in, c_out, stride, size = shape
    torch.manual_seed(0)
    block = SkewConvODE(c_in, c_out, stride, z0=z0).to(dtype)
    x = torch.rand(2, c_in, size, size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    _assert_same_solve(block, x, dtype)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("z0", ["channel_copy", "zeros"])
@pytest.mark.parametrize("size", [16, 9])
def test_fast_3x3_stride_2_block_takes_the_reference_steps(size, z0, dtype):
    torch.manual_seed(0)
    block = SkewConvODE(16, 32, 2, kernel_size=3, z0=z0).to(dtype)
    x = torch.rand(2, 16, size, size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    _assert_same_solve(block, x, dtype)


@pytest.mark.parametrize(
    "options",
    [
        {"adjoint": True, "activation": "tanh", "tol": 1e-4},
        {"step_control": "per_sample"},
        {"method": "rk4", "step_size": 0.25},
    ],
    ids=["adjoint", "per_sample", "rk4"],
)
def test_fast_block_under_other_solvers(options):
    torch.manual_seed(0)
    block = SkewConvODE(16, 32, 2, **options).double()
    x = torch.rand(2, 16, 16, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    _assert_same_solve(block, x, F64)


def test_fast_linear_and_neural_ode_blocks_take_the_reference_steps():
    torch.manual_seed(0)
    head = SkewLinearODE(64, 10).double()
    _assert_same_solve(head, torch.randn(4, 64, dtype=F64), F64)
    node = NeuralODEBlock(16).double()
    _assert_same_solve(node, torch.randn(2, 16, 32, 32, dtype=F64), F64)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("soblock", {"width": 16}),
        ("sonet", {"width": 16, "blocks_per_stage": 1}),
        ("sonet_paper_text", {"width": 16}),
        ("odenet", {"width": 16, "num_blocks": 2}),
    ],
)
def test_models_give_the_reference_logits_gradients_and_nfe(name, options):
    torch.manual_seed(0)
    fast = create_model(name, **options).double()
    ref = _reference(fast)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = torch.tensor([1, 7])
    results = []
    for model in (fast, ref):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        results.append(
            (
                loss,
                torch.autograd.grad(loss, list(model.parameters())),
                [b.nfe for b in model.ode_blocks()],
            )
        )
    (loss, grads, nfe), (loss_r, grads_r, nfe_r) = results
    assert nfe == nfe_r
    assert abs(float((loss - loss_r).detach())) <= 1e-10 * abs(float(loss_r.detach()))
    assert _worst(grads, grads_r, common_scale=True) <= 1e-9


def test_layouts_the_fast_blocks_choose_on_the_cpu():
    """The states are solved in the layouts of nn/layout.py and handed back in NCHW."""
    seen = []

    def spy(module, args):
        seen.append(tuple(_layout(v) for v in args[1]))

    cases = [
        ((3, 16, 1, 32), (CONTIGUOUS, CHANNELS_LAST)),  # stem: 3-channel image stays NCHW
        ((16, 16, 1, 32), (CHANNELS_LAST, CHANNELS_LAST)),
        ((16, 32, 2, 16), (CHANNELS_LAST, CHANNELS_LAST)),
        ((32, 32, 1, 8), (CHANNELS_LAST, CHANNELS_LAST)),
        ((32, 64, 2, 4), (CONTIGUOUS, CONTIGUOUS)),  # below 8×8: NCHW
        ((3, 8, 1, 32), (CONTIGUOUS, CONTIGUOUS)),  # both states under 16 channels: NCHW
    ]
    for (c_in, c_out, stride, size), expected in cases:
        block = SkewConvODE(c_in, c_out, stride, method="euler")
        handle = block.field.register_forward_pre_hook(spy)
        seen.clear()
        out = block(torch.rand(2, c_in, size, size))
        handle.remove()
        assert seen and all(s == expected for s in seen), (c_in, c_out, stride, size, seen)
        assert out.is_contiguous()
        ref = _reference(block)
        ref.field.register_forward_pre_hook(spy)
        seen.clear()
        ref(torch.rand(2, c_in, size, size))
        assert all(s == (CONTIGUOUS, CONTIGUOUS) for s in seen)


def _layout(v: torch.Tensor) -> torch.memory_format:
    if not v.is_contiguous() and v.is_contiguous(memory_format=CHANNELS_LAST):
        return CHANNELS_LAST
    assert v.is_contiguous()
    return CONTIGUOUS


def test_resnet_after_a_fast_stem_sees_only_nchw_tensors():
    """oneDNN 3.12 corrupts the heap in a channels-last strided 1×1 weight gradient
    (docs/training.md): SOBlock's shortcuts must get NCHW inputs from the fast stem."""
    model = create_model("soblock", width=16)
    inputs = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):
            module.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert len(inputs) == 3 and all(v.is_contiguous() for v in inputs)


def test_set_reference_fields_switches_every_field():
    model = create_model("sonet", width=8)
    assert set_reference_fields(model) == 10  # stem, 8 stage blocks, classifier
    assert all(b.field.reference for b in model.ode_blocks())
    assert set_reference_fields(model, False) == 10
    assert not any(b.field.reference for b in model.ode_blocks())


def _nhwc_group_norm_case(mean: float, spread: float, dtype=F32):
    gen = torch.Generator().manual_seed(4)
    x = mean + spread * torch.randn(2, 16, 8, 8, generator=gen, dtype=F64)
    norm = torch.nn.GroupNorm(4, 16).to(dtype)
    _perturb_norms(norm)
    return x, norm


def test_normalize_keeps_groups_with_a_large_mean_accurate():
    """PyTorch's NHWC GroupNorm takes the variance as E[x²] − E[x]²: at mean/std = 100 its
    float32 output is 3e-3 off; layout.normalize recomputes such groups in NCHW."""
    x, norm = _nhwc_group_norm_case(mean=1.0, spread=0.01)
    exact = copy.deepcopy(norm).double()(x)
    # an input that needs a gradient, so the other guard (below) stays out of the way
    nhwc = x.float().contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    assert _worst([norm(nhwc)], [exact]) > 1e-4  # the kernel's own error, which this guards
    out = normalize(norm, nhwc)
    assert _layout(out) == CHANNELS_LAST
    assert _worst([out], [exact]) <= 1e-5
    x, norm = _nhwc_group_norm_case(mean=0.1, spread=1.0)  # ordinary groups: NHWC kernel
    nhwc = x.float().contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    assert torch.equal(normalize(norm, nhwc), norm(nhwc))


def test_normalize_gives_weight_gradients_of_an_nhwc_input_that_needs_none():
    """torch 2.13 segfaults in GroupNorm's NHWC backward when only the weight needs a
    gradient (the first evaluation of a stem); layout.normalize avoids that kernel there."""
    x, norm = _nhwc_group_norm_case(mean=0.0, spread=1.0, dtype=F64)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = normalize(norm, x.contiguous(memory_format=CHANNELS_LAST))
    grads = torch.autograd.grad(out, list(norm.parameters()), g)
    expected = torch.autograd.grad(norm(x), list(norm.parameters()), g)
    assert _worst(grads, expected) <= 1e-12


def test_in_layout_returns_the_gradient_in_the_source_layout():
    """A block hands back NCHW; the gradient must enter its solve in the solve's NHWC
    (Tensor.contiguous would pass the NCHW gradient on)."""
    v = torch.randn(2, 16, 4, 4).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    out = in_layout(v, CONTIGUOUS)
    assert _layout(out) == CONTIGUOUS and torch.equal(out, v)
    (g,) = torch.autograd.grad(out, v, torch.ones(2, 16, 4, 4))
    assert _layout(g) == CHANNELS_LAST and torch.equal(g, torch.ones_like(g))
    (g,) = torch.autograd.grad(v.contiguous(), v, torch.ones(2, 16, 4, 4))
    assert _layout(g) == CONTIGUOUS  # what in_layout is there to avoid
    assert in_layout(v, CHANNELS_LAST) is v


def test_the_backward_pass_of_a_fast_solve_stays_channels_last():
    """The gradients reaching the field come back in the state's NHWC layout, so the
    solve's backward pass runs without layout copies. SolverConfig.solve selects the
    final state with a layout-keeping backward (indexing's allocates an NCHW gradient:
    then 19 of these 40 arrive NCHW, each copied in a GroupNorm or convolution backward).
    Gradients that come through a norm — the first step size, the error estimate of the
    last step — arrive as PyTorch's reductions give them (3 here)."""
    nhwc = []

    def keep_grad_layouts(module, args, outputs):
        for out in outputs:
            out.register_hook(lambda g: nhwc.append(_layout(g) == CHANNELS_LAST))

    torch.manual_seed(0)
    block = SkewConvODE(16, 16, 1)
    block.field.register_forward_hook(keep_grad_layouts)
    out = block(torch.rand(2, 16, 32, 32))
    assert _layout(out) == CONTIGUOUS
    torch.autograd.grad(out.square().sum(), list(block.parameters()))
    assert len(nhwc) == 2 * block.nfe == 40
    assert sum(nhwc) >= 36
