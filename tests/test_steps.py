"""``robustode steps`` (SONet Table 3): step grids of ODE blocks along a PGD trajectory.

Tiny SOBlocks on 1×8×8 inputs, one thread, a few PGD iterations: the file runs in seconds.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustode.cli import main
from robustode.evaluate import StepStudy, format_steps_table, pgd_trajectory, step_study
from robustode.evaluate.steps import (
    TrajectorySettings,
    grid_change,
    grid_of,
    plot_steps,
    solver_tolerance,
)
from robustode.models import create_model
from robustode.ode import StepRecord
from robustode.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _soblock(**options) -> nn.Module:
    torch.manual_seed(0)
    return create_model("soblock", width=4, num_classes=10, in_channels=1, **options).eval()


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _record_grid(block) -> list[float]:
    return grid_of(block.last_record.accepted_steps(), block.solver.t1)[0]


# ----------------------------------------------------------------- grids
def test_grid_of_and_grid_change():
    grid, over = grid_of([(0.0, 0.25), (0.25, 0.9)], 1.0)
    assert grid == [0.0, 0.25, 1.0] and over == pytest.approx(0.15)
    assert grid_of([(0.0, 0.5), (0.5, 0.5)], 1.0) == ([0.0, 0.5, 1.0], 0.0)
    assert grid_change([0, 0.2, 0.6, 1], [0, 0.3, 0.4, 1]) == pytest.approx(0.15)
    # a grid that gained a step is compared over the common prefix
    assert grid_change([0, 0.2, 1], [0, 0.25, 0.9, 1]) == pytest.approx(0.05)
    assert grid_change([0, 1], [0, 0.5, 1]) == 0.0


def test_clean_grid_is_torchdiffeqs_grid_and_well_formed():
    pytest.importorskip("torchdiffeq")
    model = _soblock()
    x, y = _batch()
    study = step_study(model, x, y, iterations=(1,), per_image=False)
    (block,) = study.blocks
    clean = block["batch"][0]
    assert clean["iteration"] == 0

    # the same block and input run by torchdiffeq itself (its accept-step callback)
    stem = model.stem
    stem.solver = stem.solver.replace(backend="torchdiffeq")
    with torch.no_grad():
        model(x)
    reference = stem.last_record
    grid, over = grid_of(reference.accepted_steps(), 1.0)
    # float32 states: the two engines' error norms agree to rounding, so the grids to ~1e-7
    assert clean["grid"] == pytest.approx(grid, abs=1e-6)
    assert clean["overshoot"] == pytest.approx(over, abs=1e-6)
    assert clean["nfe_forward"] == reference.nfe_forward
    assert clean["rejected"] == len(reference.rejected_steps())

    for row in block["batch"]:
        g = row["grid"]
        assert g[0] == 0.0 and g[-1] == block["t1"] == 1.0
        assert all(a < b for a, b in itertools.pairwise(g))
        assert row["overshoot"] >= 0
        # dopri5 (FSAL): 2 evaluations to start (f0 and the first-step probe), 6 per attempt
        assert row["nfe_forward"] == 2 + 6 * (len(g) - 1 + row["rejected"])
        assert len(row["dt"]) == len(g) - 1


def test_trajectory_is_k_manual_sign_gradient_steps():
    model = _soblock()
    x, y = _batch()
    iterates = pgd_trajectory(model, x, y, [1, 3])
    assert set(iterates) == {0, 1, 3}
    assert torch.equal(iterates[0], x)
    eps, alpha = 0.031, 0.003
    x_k = x.clone()
    for k in range(1, 4):
        x_k = x_k.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_k), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_k)
        x_k = x_k.detach() + alpha * grad.sign()
        x_k = torch.min(torch.max(x_k, x - eps), x + eps).clamp(0, 1)
        if k in iterates:
            assert torch.allclose(iterates[k], x_k, atol=1e-6), k
    assert (iterates[3] - x).abs().max() <= 3 * alpha + 1e-6
    assert not torch.equal(iterates[3], x)


def test_trajectory_settings_follow_the_preset_and_overrides():
    s = TrajectorySettings.from_attack("pgd1000-linf")
    assert (s.norm, s.eps, s.step_size, s.random_start) == ("linf", 0.031, 0.003, False)
    s = TrajectorySettings.from_attack("pgd20-l2", eps=0.25, step_size=0.05)
    assert (s.norm, s.eps, s.step_size) == ("l2", 0.25, 0.05)
    with pytest.raises(ValueError, match="projected-gradient"):
        TrajectorySettings.from_attack("square")


def test_tighter_tolerance_gives_more_steps_and_is_restored():
    model = _soblock()
    x, y = _batch()
    loose = step_study(model, x, y, iterations=(2,), tol=0.1)
    tight = step_study(model, x, y, iterations=(2,), tol=0.001)
    assert model.stem.solver.rtol == 0.1  # the model's own tolerance again
    assert loose.blocks[0]["rtol"] == 0.1 and tight.blocks[0]["rtol"] == 0.001
    assert len(tight.blocks[0]["batch"][0]["grid"]) > len(loose.blocks[0]["batch"][0]["grid"])
    assert (
        tight.blocks[0]["per_image"][0]["mean_steps"]
        > loose.blocks[0]["per_image"][0]["mean_steps"]
    )
    with solver_tolerance(model, 0.01):
        assert model.stem.solver.atol == 0.01
    assert model.stem.solver.atol == 0.1


def test_per_image_grids_equal_single_image_forwards():
    model = _soblock()
    x, y = _batch(3)
    study = step_study(model, x, y, iterations=(2,))
    iterates = pgd_trajectory(model, x, y, [2])
    spread = {r["iteration"]: r for r in study.blocks[0]["per_image"]}
    with torch.no_grad():
        for k in (0, 2):
            for i in range(3):
                model(iterates[k][i : i + 1])
                assert spread[k]["grids"][i] == _record_grid(model.stem)
    s = spread[2]
    assert s["mean_steps"] == pytest.approx(sum(len(g) - 1 for g in s["grids"]) / 3)
    assert s["grid_change_mean"] > 0  # the attack moved the grids
    assert spread[0]["grid_change_mean"] == 0.0


def test_per_sample_step_control_batch_grids_match_images_alone():
    model = _soblock(step_control="per_sample")
    x, y = _batch(3)
    study = step_study(model, x, y, iterations=(1,))
    (block,) = study.blocks
    for row, spread in zip(block["batch"], block["per_image"], strict=True):
        assert len(row["grids"]) == 3
        for a, b in zip(row["grids"], spread["grids"], strict=True):
            assert a == pytest.approx(b, abs=1e-6)
    assert any("per-sample" in n for n in study.notes)
    assert "(image 0)" in format_steps_table(study)


def test_fixed_step_grids_are_reported_but_cannot_move():
    model = _soblock(method="rk4", step_size=0.25)
    x, y = _batch()
    study = step_study(model, x, y, iterations=(1, 2))
    (block,) = study.blocks
    assert not block["adaptive"]
    for row in block["batch"]:
        assert row["grid"] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
        assert row["grid_change"] == 0.0
    assert any("cannot move" in n for n in study.notes)
    assert "fixed: cannot move" in format_steps_table(study)
    with pytest.raises(ValueError, match="adaptive"):
        step_study(model, x, y, iterations=(1,), tol=0.01)


def test_bad_input_is_one_value_error():
    x, y = _batch()
    plain = create_model("resnet10", width=4, num_classes=10, in_channels=1).eval()
    with pytest.raises(ValueError, match="no ODE blocks"):
        step_study(plain, x, y)
    with pytest.raises(ValueError, match="≥ 1"):
        step_study(_soblock(), x, y, iterations=(0, 5))
    with pytest.raises(ValueError, match="at least one"):
        step_study(_soblock(), x, y, iterations=())


def test_table_json_and_plot(tmp_path):
    model = _soblock()
    x, y = _batch()
    studies = [step_study(model, x, y, iterations=(1, 2), tol=t) for t in (0.1, 0.01)]
    assert isinstance(studies[0], StepStudy)
    table = format_steps_table(studies)
    assert "| Solver | PGD iterations | Adaptive steps |" in table
    assert "dopri5 (rtol=0.01" in table and "0 (clean)" in table
    assert "[0.000, " in table and ", 1.000]" in table
    doc = json.loads(json.dumps(studies[0].to_dict()))
    assert doc["iterations"] == [1, 2] and doc["attack"]["eps"] == 0.031
    assert [r["iteration"] for r in doc["blocks"][0]["batch"]] == [0, 1, 2]
    plot_steps(studies, tmp_path / "steps.png")
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"


def test_record_reading_is_unchanged_by_a_study():
    # the study reads block.last_record only; a fresh forward still fills a fresh record
    model = _soblock()
    x, y = _batch()
    step_study(model, x, y, iterations=(1,), per_image=False)
    with torch.no_grad():
        model(x)
    assert isinstance(model.stem.last_record, StepRecord)
    assert model.stem.last_record.nfe_forward > 0


# ----------------------------------------------------------------- CLI
def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors exit; ours return
        return int(exc.code)


def _train(run_dir, model: str):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig.from_dict(
            {
                "model": model,
                "model_options": {"width": 4},
                "batch_size": 16,
                "max_steps_per_epoch": 1,
                "eval_subset": 16,
                "test_batch_size": 16,
                "device": "cpu",
                "epochs": 1,
            }
        )
        train(config, run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def soblock_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs") / "soblock", "soblock")


def test_cli_end_to_end(soblock_run, capsys):
    argv = ["steps", str(soblock_run), "--n", "3", "--iterations", "2,1", "--tol", "0.1,0.01"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "PGD iterations" in out and "dopri5 (rtol=0.01" in out
    folder = soblock_run / "steps"
    doc = json.loads((folder / "steps.json").read_text())
    assert [s["tol"] for s in doc["studies"]] == [0.1, 0.01]
    assert doc["settings"]["iterations"] == [1, 2] and doc["settings"]["n"] == 3
    assert (folder / "steps.png").stat().st_size > 0
    # the same settings again replace the results; other settings need --overwrite
    assert main(argv) == 0
    capsys.readouterr()
    other = ["steps", str(soblock_run), "--n", "3", "--iterations", "1", "--no-per-image"]
    assert main(other) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustode: error:") and "--overwrite" in err and "\n" not in err
    assert main([*other, "--overwrite"]) == 0
    doc = json.loads((folder / "steps.json").read_text())
    assert doc["studies"][0]["per_image"] is False


@pytest.mark.parametrize(
    "extra",
    [["--iterations", "0"], ["--iterations", "1,-3"], ["--iterations", "x"], ["--tol", "0"]],
)
def test_cli_rejects_bad_arguments(soblock_run, tmp_path, capsys, extra):
    assert _main(["steps", str(soblock_run), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustode: error:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_cli_model_without_ode_blocks(tmp_path, capsys):
    run = _train(tmp_path / "resnet", "resnet10")
    capsys.readouterr()
    assert main(["steps", str(run), "--n", "2", "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustode: error:") and "no ODE blocks" in err and "\n" not in err
    assert not (run / "steps").exists()


def test_random_start_trajectory_keeps_the_clean_row_clean():
    model = _soblock()
    x, y = _batch()
    iterates = pgd_trajectory(
        model, x, y, [1], TrajectorySettings.from_attack("pgd-linf", eps=0.05)
    )
    assert not torch.equal(iterates[0], x)  # the random start
    assert (iterates[0] - x).abs().max() <= 0.05 + 1e-6
    study = step_study(model, x, y, iterations=(1,), attack="pgd-linf", per_image=False)
    with torch.no_grad():
        model(x)
    assert study.blocks[0]["batch"][0]["grid"] == _record_grid(model.stem)
    assert "random start" in study.attack["description"]
