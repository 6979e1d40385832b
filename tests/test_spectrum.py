"""The spectrum of a trained block's field (SONet Theorem 3.1 measured), against a dense
eigen-decomposition of the Jacobian autograd builds on a block small enough to hold it."""

from __future__ import annotations

import pytest
import torch

from robustode.evaluate.spectrum import (
    block_stability,
    field_jacobian_operator,
    max_real_eigenvalue,
    theorem_conditions,
)
from robustode.models import create_model
from robustode.nn import SkewConvODE

pytestmark = pytest.mark.usefixtures("one_thread")


def _dense_max_real(field, state) -> float:
    sizes = [s.numel() for s in state]

    def f(v):
        parts, start = [], 0
        for s, n in zip(state, sizes, strict=True):
            parts.append(v[start : start + n].view_as(s))
            start += n
        out = field(torch.tensor(0.0, dtype=torch.float64), tuple(parts))
        return torch.cat([o.reshape(-1) for o in out])

    jacobian = torch.autograd.functional.jacobian(f, torch.cat([s.reshape(-1) for s in state]))
    return float(torch.linalg.eigvals(jacobian).real.max())


@pytest.mark.parametrize(
    "options",
    [
        {"norm": None, "gamma": 0.1, "activation": "leaky_relu"},
        {"norm": None, "gamma": 0.0, "activation": "tanh"},
        {"norm": "group", "gamma": 0.0, "activation": "leaky_relu"},
        {"norm": "group", "gamma": 0.2, "activation": "relu", "skew": False},
    ],
    ids=["theorem", "tanh-undamped", "reference", "unconstrained-relu"],
)
def test_the_largest_real_part_from_jvps_matches_autograds_dense_jacobian(options):
    torch.manual_seed(0)
    block = SkewConvODE(2, 4, **options).double()
    g = torch.Generator().manual_seed(1)
    state = (
        torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64),
        torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64),
    )
    apply, size = field_jacobian_operator(block.field, state)
    exact = _dense_max_real(block.field, state)
    assert max_real_eigenvalue(apply, size) == pytest.approx(exact, abs=1e-6)
    arnoldi = max_real_eigenvalue(apply, size, krylov=20, dense_limit=0)
    if options.get("skew", True) and options["norm"] is None:
        # the damped skew spectra cluster (γ·σ' repeated): ARPACK does not converge, and
        # the answer is NaN, never an unconverged Ritz value
        assert arnoldi != arnoldi or arnoldi == pytest.approx(exact, abs=1e-6)
    else:
        # restarted Arnoldi on a 20-vector basis for the 54 dimensions finds it
        assert arnoldi == pytest.approx(exact, abs=1e-6)


def test_the_theorems_conditions_and_a_negative_spectrum_on_the_faithful_block():
    faithful = SkewConvODE(1, 2, norm=None, gamma=0.1, z0="zeros")
    assert theorem_conditions(faithful)["hold"] is True
    reference = SkewConvODE(1, 2)  # GroupNorm around σ, γ = 0: the blocks the paper trained
    conditions = theorem_conditions(reference)
    assert conditions["hold"] is False
    assert conditions["checks"] == {
        "skew_weights": True,
        "positive_damping": False,
        "increasing_activation": True,
        "no_normalisation": False,
    }
    assert (
        theorem_conditions(SkewConvODE(1, 2, norm=None, gamma=0.1, activation="relu"))["checks"][
            "increasing_activation"
        ]
        is False
    )


def test_block_stability_of_a_model_reports_every_block_and_image():
    model = create_model("soblock", width=4, in_channels=1, seed=0, norm=None, gamma=0.1)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    (stem,) = block_stability(model, x)
    summary = stem.summary()
    assert summary["block"] == "stem" and summary["images"] == 2
    assert summary["conditions"]["hold"] is True
    # D(A − γI) with D > 0 and A skew: every eigenvalue has a negative real part
    assert summary["max_real_eig_initial"]["max"] < 0
    assert summary["max_real_eig_final"]["max"] < 0
    assert 0 < summary["amplification"]["max"] < 10


def test_the_stability_command_measures_a_models_blocks(tmp_path, capsys):
    import json

    from robustode.cli import main

    source = tmp_path / "faithful.py"
    source.write_text(
        "from robustode.models import create_model\n\n\ndef build():\n"
        "    return create_model('soblock', width=4, in_channels=1, seed=0, norm=None, "
        "gamma=0.1)\n"
    )
    out = tmp_path / "stability"
    argv = ["stability", "--model", f"{source}:build", "--data", "digits", "--n", "1"]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| stem |" in printed and "| hold |" in printed
    report = json.loads((out / "spectrum.json").read_text())
    (stem,) = report["blocks"]
    assert stem["max_real_eig_initial"]["max"] < 0  # the theorem's block, measured
    assert report["meta"]["factory"].endswith("faithful.py:build")
    # the same folder with another model is refused, as every command's
    source.write_text(source.read_text().replace("gamma=0.1", "gamma=0.2"))
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("robustode: error:") and "--overwrite" in line, line


def test_soblock_stable_is_the_block_the_theorem_covers():
    stable = create_model("soblock_stable", width=4, in_channels=1, seed=0)
    assert theorem_conditions(stable.stem)["hold"] is True
    assert theorem_conditions(create_model("soblock", width=4, in_channels=1).stem)["hold"] is False
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    (stem,) = block_stability(stable, x)
    assert stem.summary()["max_real_eig_initial"]["max"] < 0
