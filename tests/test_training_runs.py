"""CPU-sized smoke versions of the issue-5 training runs (benchmarks/training_runs.sh).

Each runs `robustode train` on the real CIFAR-10 subset for two steps of one
epoch with the same model, defense and solver as the full run, and checks the
run folder: finite loss, a checkpoint, and — for ODE models — NFE recorded.
"""

from __future__ import annotations

import math

import pytest

from robustode.cli import main
from robustode.train import read_metrics

from .cifar_subset import CIFAR_DIR

# (run name, model, model options, defense) — as in benchmarks/training_runs.sh, smaller widths
RUNS = [
    ("resnet10-natural", "resnet10", ["width=4"], "natural"),
    ("soblock-euler-natural", "soblock", ["width=4", "method=euler", "step_size=0.25"], "natural"),
    ("soblock-dopri5-natural", "soblock", ["width=4", "method=dopri5", "tol=0.1"], "natural"),
    ("resnet10-pgd_at", "resnet10", ["width=4"], "pgd_at"),
    ("resnet10-trades", "resnet10", ["width=4"], "trades"),
    ("preact_resnet56-natural", "preact_resnet56", [], "natural"),
    ("preact_resnet56-lad", "preact_resnet56", [], "lad"),
    ("preact_resnet56-lad_sm", "preact_resnet56", [], "lad_sm"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("name", "model", "options", "defense"), RUNS, ids=[r[0] for r in RUNS])
def test_training_run_smoke(name, model, options, defense, tmp_path, capsys):
    if not (CIFAR_DIR / "data_batch_1").is_file():
        pytest.skip(f"no CIFAR-10 subset at {CIFAR_DIR}")
    run = tmp_path / name
    argv = ["train", "--run-dir", str(run), "--model", model, "--defense", defense]
    for option in options:
        argv += ["--model-opt", option]
    argv += ["--data", "cifar10", "--data-dir", str(CIFAR_DIR), "--epochs", "1"]
    argv += ["--max-steps-per-epoch", "2", "--batch-size", "8", "--eval-subset", "16"]
    argv += ["--no-progress-bar", "--device", "cpu"]
    assert main(argv) == 0
    capsys.readouterr()
    (record,) = read_metrics(run)
    assert math.isfinite(record["loss"])
    assert 0 <= record["test_acc"] <= 1
    assert (run / "checkpoints" / "epoch-0001.safetensors").is_file()
    if model == "soblock":
        assert record["nfe_forward"] > 0
